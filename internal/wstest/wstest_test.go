package wstest

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func TestFrameRoundTrip(t *testing.T) {
	tests := []struct {
		name string
		give Frame
	}{
		{"small masked", Frame{Fin: true, Opcode: OpText, Masked: true, Payload: []byte("hello")}},
		{"medium unmasked", Frame{Fin: true, Opcode: OpBinary, Payload: bytes.Repeat([]byte{7}, 300)}},
		{"large masked fragment", Frame{Opcode: OpBinary, Masked: true, Payload: bytes.Repeat([]byte{9}, 70000)}},
		{"close", Frame{Fin: true, Opcode: OpClose, Masked: true, Payload: ClosePayload(1001, "bye")}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, b := net.Pipe()
			defer a.Close()
			defer b.Close()
			go func() { (&Conn{Conn: a}).WriteFrame(tt.give) }()
			got, err := (&Conn{Conn: b, R: newReader(b)}).ReadFrame()
			if err != nil {
				t.Fatal(err)
			}
			if got.Fin != tt.give.Fin || got.Opcode != tt.give.Opcode || got.Masked != tt.give.Masked ||
				!bytes.Equal(got.Payload, tt.give.Payload) {
				t.Fatalf("got %+v", got)
			}
		})
	}
	if c := (Frame{Payload: ClosePayload(1002, "")}).CloseCode(); c != 1002 {
		t.Fatalf("CloseCode = %d", c)
	}
}

func TestProxyStall(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			accepted <- c
		}
		close(accepted)
	}()
	p, err := NewProxy(ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s := <-accepted
	defer s.Close()

	buf := make([]byte, 4)
	c.Write([]byte("ping"))
	s.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := s.Read(buf); err != nil || string(buf) != "ping" {
		t.Fatalf("forwarded %q, %v", buf, err)
	}
	p.Stall()
	c.Write([]byte("lost"))
	s.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	if n, err := s.Read(buf); n != 0 || err == nil {
		t.Fatalf("stalled proxy forwarded %q", buf[:n])
	}
}

func newReader(c net.Conn) *bufio.Reader { return bufio.NewReader(c) }

// TestFreePort: the port and its offsets can be bound, and on Linux the
// port lies below the ephemeral range when there is room for it.
func TestFreePort(t *testing.T) {
	port, err := FreePort(10000)
	if err != nil {
		t.Fatal(err)
	}
	if low, ok := ephemeralLow(); ok && low-1-10000 > 10000 && port+10000 >= low {
		t.Errorf("port %d (+10000) reaches the ephemeral range from %d", port, low)
	}
	for _, p := range []int{port, port + 10000} {
		ln, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p))
		if err != nil {
			t.Fatalf("port %d not free: %v", p, err)
		}
		ln.Close()
	}
}

// TestProxyStallExisting: the connections open at StallExisting stop
// forwarding; a new one forwards.
func TestProxyStallExisting(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var echoes sync.WaitGroup
	defer echoes.Wait()
	defer ln.Close()
	echoes.Add(1)
	go func() { // echo server; ends when ln closes, after its connections
		defer echoes.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			echoes.Add(1)
			go func() { // ends when the proxy closes its end
				defer echoes.Done()
				defer c.Close()
				_, _ = io.Copy(c, c)
			}()
		}
	}()
	p, err := NewProxy(ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	echo := func(c net.Conn, msg string, wait time.Duration) bool {
		c.Write([]byte(msg))
		c.SetReadDeadline(time.Now().Add(wait))
		buf := make([]byte, len(msg))
		_, err := io.ReadFull(c, buf)
		return err == nil && string(buf) == msg
	}
	old, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	if !echo(old, "before", 5*time.Second) {
		t.Fatal("no echo before the stall")
	}
	p.StallExisting()
	if echo(old, "lost", 100*time.Millisecond) {
		t.Fatal("a stalled connection forwarded")
	}
	fresh, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer fresh.Close()
	if !echo(fresh, "after", 5*time.Second) {
		t.Fatal("a new connection does not forward")
	}
}
