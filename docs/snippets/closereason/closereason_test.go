// Package closereason reproduces, with coder/websocket alone, how a server
// answers a close frame whose reason is not valid UTF-8. RFC 6455 asks for
// UTF-8 close reasons (section 5.5.1) and for the connection to be failed
// when a byte stream that must be UTF-8 is not (section 8.1), with close
// code 1007 (section 7.4.1). coder/websocket v1.8.15 echoes the peer's code
// and its invalid reason instead.
package closereason

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/coder/websocket"
)

func TestInvalidUTF8CloseReason(t *testing.T) {
	// A plain coder/websocket server that reads until the socket closes.
	readErr := make(chan error, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			readErr <- err
			return
		}
		defer c.CloseNow()
		_, _, err = c.Read(context.Background())
		readErr <- err
	}))
	defer srv.Close()

	// A raw TCP client: client libraries will not send an invalid reason.
	addr := srv.Listener.Addr().String()
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	_ = nc.SetDeadline(time.Now().Add(10 * time.Second)) // a hung server fails the test
	fmt.Fprintf(nc, "GET / HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n", addr)
	br := bufio.NewReader(nc)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("handshake: %s", resp.Status)
	}

	// A masked close frame (FIN, opcode 8): code 1000, reason bytes 0xff 0xfe.
	payload := []byte{0x03, 0xe8, 0xff, 0xfe}
	mask := []byte{0x12, 0x34, 0x56, 0x78}
	frame := append([]byte{0x88, 0x80 | byte(len(payload))}, mask...)
	for i, b := range payload {
		frame = append(frame, b^mask[i%4])
	}
	if _, err := nc.Write(frame); err != nil {
		t.Fatal(err)
	}

	// The server's answer: an unmasked close frame with a short payload.
	hdr := make([]byte, 2)
	if _, err := io.ReadFull(br, hdr); err != nil {
		t.Fatal(err)
	}
	if hdr[0] != 0x88 || hdr[1]&0x80 != 0 || hdr[1] < 2 || hdr[1] > 125 {
		t.Fatalf("server's answer is not a close frame: % x", hdr)
	}
	got := make([]byte, hdr[1])
	if _, err := io.ReadFull(br, got); err != nil {
		t.Fatal(err)
	}
	code, reason := binary.BigEndian.Uint16(got), string(got[2:])
	t.Logf("server answered close code %d, reason %q; RFC 6455 expects 1007", code, reason)

	// Today's behaviour: the code and the invalid reason are echoed, and the
	// server's Read reports a normal close. When coder/websocket fails the
	// connection as RFC 6455 asks, the answer becomes 1007 and these
	// assertions flip.
	if code != 1000 || reason != "\xff\xfe" {
		t.Errorf("server answered %d %q; it echoed 1000 \"\\xff\\xfe\" before (fixed upstream?)", code, reason)
	}
	var ce websocket.CloseError
	if err := <-readErr; !errors.As(err, &ce) || ce.Code != websocket.StatusNormalClosure {
		t.Errorf("server's Read: %v; it returned a 1000 CloseError before (fixed upstream?)", err)
	}
}
