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

// proxyPair starts a Proxy to a new listener, calls setup on it, and
// connects a client through it: the client's end and the target's end.
// The test's cleanup closes everything.
func proxyPair(t *testing.T, setup func(*Proxy)) (p *Proxy, client, server net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	p, err = NewProxy(ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	if setup != nil {
		setup(p)
	}
	client, err = net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	ln.(*net.TCPListener).SetDeadline(time.Now().Add(5 * time.Second))
	server, err = ln.Accept() // the proxy dialled it when it accepted client
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { server.Close() })
	return p, client, server
}

// send writes msg to c.
func send(t *testing.T, c net.Conn, msg string) {
	t.Helper()
	c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, msg); err != nil {
		t.Fatalf("write %q: %v", msg, err)
	}
}

// expect reads len(want) bytes from c and compares them with want.
func expect(t *testing.T, c net.Conn, want string) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	got := make([]byte, len(want))
	if n, err := io.ReadFull(c, got); err != nil || string(got) != want {
		t.Fatalf("read %q, %v; want %q", got[:n], err, want)
	}
}

// expectEOF reads EOF from c, nothing before it.
func expectEOF(t *testing.T, c net.Conn) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 16)
	if n, err := c.Read(buf); err != io.EOF {
		t.Fatalf("read %q, %v; want EOF", buf[:n], err)
	}
}

// expectSilence checks that c receives nothing, not even EOF, for a while:
// open but quiet.
func expectSilence(t *testing.T, c net.Conn, what string) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	buf := make([]byte, 16)
	n, err := c.Read(buf)
	if ne, ok := err.(net.Error); !ok || !ne.Timeout() {
		t.Fatalf("%s: read %q, %v; want nothing", what, buf[:n], err)
	}
}

// TestProxyPause: while paused, a direction forwards nothing, neither data
// nor EOF, and the connection stays open; Resume forwards what was held,
// in order, including far more than the proxy's one read. Pausing Up
// leaves Down flowing.
func TestProxyPause(t *testing.T) {
	p, c, s := proxyPair(t, nil)
	send(t, c, "hello")
	expect(t, s, "hello")

	p.Pause(Both)
	send(t, c, "up-1")
	send(t, s, "down-1")
	expectSilence(t, s, "paused Up")
	expectSilence(t, c, "paused Down")
	send(t, c, "up-2")
	big := bytes.Repeat([]byte("0123456789abcdef"), 1<<16) // 1 MiB: more than the proxy holds
	wrote, done := make(chan error, 1), make(chan struct{})
	go func() { // owned by the test: the cleanup below ends it and waits
		defer close(done)
		c.SetWriteDeadline(time.Now().Add(10 * time.Second))
		_, err := c.Write(big)
		wrote <- err
	}()
	t.Cleanup(func() { // before the other cleanups: they close c after it
		c.Close()
		<-done
	})
	expectSilence(t, s, "paused Up, with a large write under way")
	p.Resume(Both)
	expect(t, s, "up-1up-2")
	expect(t, c, "down-1")
	expect(t, s, string(big))
	if err := <-wrote; err != nil {
		t.Fatal(err)
	}

	p.Pause(Up)
	send(t, c, "up-3")
	send(t, s, "down-2")
	expect(t, c, "down-2")
	expectSilence(t, s, "paused Up only")
	c.(*net.TCPConn).CloseWrite()
	expectSilence(t, s, "paused Up, the client's EOF held")
	p.Resume(Up)
	expect(t, s, "up-3")
	expectEOF(t, s)
}

// TestProxyThrottle: a throttled direction forwards at no more than its
// rate, intact; the other direction is not slowed; a rate of 0 lifts the
// limit.
func TestProxyThrottle(t *testing.T) {
	const rate, size = 256 << 10, 64 << 10 // at least a quarter of a second
	p, c, s := proxyPair(t, func(p *Proxy) { p.Throttle(Down, rate) })
	msg := string(bytes.Repeat([]byte("throttle"), size/8))

	start := time.Now()
	send(t, c, msg)
	expect(t, s, msg)
	up := time.Since(start)

	start = time.Now()
	send(t, s, msg)
	expect(t, c, msg)
	down := time.Since(start)
	// Each read of the client's forwards at most share(rate), one per
	// pace: reads-1 paces at the very least.
	floor := time.Duration(size/share(rate)-1) * pace
	t.Logf("%d bytes: %v up, %v down throttled to %d B/s (floor %v)", size, up, down, rate, floor)
	if down < floor {
		t.Fatalf("throttled direction took %v, less than %v", down, floor)
	}
	if up > down/2 {
		t.Fatalf("the other direction took %v, throttled %v", up, down)
	}

	p.Throttle(Down, 0)
	send(t, s, "x") // the first write may still wait out one pace
	expect(t, c, "x")
	start = time.Now()
	send(t, s, msg)
	expect(t, c, msg)
	if lifted := time.Since(start); lifted > down/2 {
		t.Fatalf("after Throttle(Down, 0) it took %v, throttled %v", lifted, down)
	}
}

// TestProxyStallClose: a stalled connection does not forward its end's
// close; an unstalled one closes the other end.
func TestProxyStallClose(t *testing.T) {
	_, c, s := proxyPair(t, nil)
	c.Close()
	expectEOF(t, s)

	p, c, s := proxyPair(t, nil)
	p.Stall()
	c.Close()
	expectSilence(t, s, "stalled, the client gone")
}
