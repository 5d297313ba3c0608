package endmatrix

import (
	"encoding/binary"
	"io"
	"net"
	"sync"

	"github.com/coder/websocket"
)

// Tap watches the bytes a client reads from the server and records the
// code of the first close frame among them. It is how a row learns what
// went on the wire, whatever the client library makes of it: coder/websocket's
// Close returns nil both when the server echoed the code and when the
// connection was already closed.
type Tap struct {
	mu     sync.Mutex
	head   int    // bytes of "\r\n\r\n" matched while skipping an HTTP head; -1 once past it
	hdr    []byte // the frame header read so far
	left   uint64 // payload bytes left in the current frame
	isCl   bool   // the current frame is a close frame
	cl     []byte // its first payload bytes (the code)
	code   websocket.StatusCode
	closed bool // a whole close frame was read
}

// newTap returns a tap that first skips an HTTP response head when
// httpHead is set (the bytes of an HTTP/1.1 connection), and otherwise
// sees frames from the first byte (an HTTP/2 stream).
func newTap(httpHead bool) *Tap {
	t := &Tap{head: -1}
	if httpHead {
		t.head = 0
	}
	return t
}

// Code returns the code of the first close frame the server sent that the
// client read: None when it read none, 1005 for a close frame without a
// code.
func (t *Tap) Code() websocket.StatusCode {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.closed {
		return None
	}
	return t.code
}

// feed parses p, the next bytes read from the server.
func (t *Tap) feed(p []byte) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for len(p) > 0 && !t.closed {
		switch {
		case t.head >= 0:
			const end = "\r\n\r\n"
			if p[0] == end[t.head] {
				t.head++
			} else if p[0] == '\r' {
				t.head = 1
			} else {
				t.head = 0
			}
			if t.head == len(end) {
				t.head = -1
			}
			p = p[1:]
		case t.left > 0:
			n := min(uint64(len(p)), t.left)
			if t.isCl && len(t.cl) < 2 {
				t.cl = append(t.cl, p[:min(n, uint64(2-len(t.cl)))]...)
			}
			t.left -= n
			p = p[n:]
			if t.left == 0 && t.isCl {
				t.endClose()
			}
		default:
			t.hdr = append(t.hdr, p[0])
			p = p[1:]
			if need := headerLen(t.hdr); len(t.hdr) == need {
				t.startFrame()
			}
		}
	}
}

// headerLen returns the length of the frame header that starts with h, as
// far as h tells (2 until the second byte is known).
func headerLen(h []byte) int {
	if len(h) < 2 {
		return 2
	}
	n := 2
	switch h[1] & 0x7f {
	case 126:
		n += 2
	case 127:
		n += 8
	}
	if h[1]&0x80 != 0 {
		n += 4 // masking key: a server must not mask, but parse it anyway
	}
	return n
}

func (t *Tap) startFrame() {
	h := t.hdr
	t.hdr = t.hdr[:0]
	n := uint64(h[1] & 0x7f)
	switch n {
	case 126:
		n = uint64(binary.BigEndian.Uint16(h[2:]))
	case 127:
		n = binary.BigEndian.Uint64(h[2:])
	}
	t.isCl, t.cl, t.left = h[0]&0x0f == 0x8, t.cl[:0], n
	if n == 0 && t.isCl {
		t.endClose()
	}
}

func (t *Tap) endClose() {
	t.closed = true
	t.code = websocket.StatusNoStatusRcvd
	if len(t.cl) == 2 {
		t.code = websocket.StatusCode(binary.BigEndian.Uint16(t.cl))
	}
}

// TapConn wraps an HTTP/1.1 client connection: what the client reads
// from it, past the response head, is tapped.
func TapConn(c net.Conn) (net.Conn, *Tap) {
	t := newTap(true)
	return &tapConn{Conn: c, tap: t}, t
}

type tapConn struct {
	net.Conn
	tap *Tap
}

func (c *tapConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.tap.feed(p[:n])
	return n, err
}

// TapStream wraps the byte stream of a WebSocket over HTTP/2 (the client's
// end of the extended CONNECT stream): what the client reads from it is
// tapped.
func TapStream(s io.ReadWriteCloser) (io.ReadWriteCloser, *Tap) {
	t := newTap(false)
	return &tapStream{ReadWriteCloser: s, tap: t}, t
}

type tapStream struct {
	io.ReadWriteCloser
	tap *Tap
}

func (s *tapStream) Read(p []byte) (int, error) {
	n, err := s.ReadWriteCloser.Read(p)
	s.tap.feed(p[:n])
	return n, err
}
