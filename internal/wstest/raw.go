// Package wstest holds test helpers for chiws: a raw TCP WebSocket client
// that can send what a well-behaved client library refuses to (malformed
// handshakes, unmasked or invalid frames), and a loopback TCP proxy that can
// go silent to imitate a peer that vanished from the network.
//
// The helpers write and parse frames only to exercise the server under test;
// chiws itself never hand-rolls framing.
package wstest

import (
	"bufio"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"
)

// Opcodes (RFC 6455 section 5.2).
const (
	OpContinuation byte = 0x0
	OpText         byte = 0x1
	OpBinary       byte = 0x2
	OpClose        byte = 0x8
	OpPing         byte = 0x9
	OpPong         byte = 0xa
)

// Conn is a raw client connection: the TCP connection and a buffered reader
// positioned after the HTTP response headers.
type Conn struct {
	net.Conn
	R    *bufio.Reader
	Resp *http.Response
}

// NewKey returns a valid Sec-WebSocket-Key: 16 random bytes in base64.
func NewKey() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return base64.StdEncoding.EncodeToString(b[:])
}

// UpgradeRequest returns a valid HTTP/1.1 upgrade request for path on host,
// with extra appended to the header block (each line ending in "\r\n").
func UpgradeRequest(host, path, extra string) string {
	return "GET " + path + " HTTP/1.1\r\n" +
		"Host: " + host + "\r\n" +
		"Upgrade: websocket\r\n" +
		"Connection: Upgrade\r\n" +
		"Sec-WebSocket-Version: 13\r\n" +
		"Sec-WebSocket-Key: " + NewKey() + "\r\n" +
		extra + "\r\n"
}

// Do dials addr, writes the raw request and reads the response headers. For
// a 101 the connection stays open for frames; otherwise the body is read and
// returned (bounded to 1 MiB) and the connection is closed. The deadline
// bounds the whole exchange. Writing and reading run concurrently, so a
// server that answers before it has read a huge request does not deadlock.
func Do(addr, raw string, deadline time.Time) (*Conn, []byte, error) {
	nc, err := net.DialTimeout("tcp", addr, time.Until(deadline))
	if err != nil {
		return nil, nil, err
	}
	_ = nc.SetDeadline(deadline)
	wrote := make(chan error, 1)
	go func() { // owned by Do, which receives from wrote
		_, err := io.WriteString(nc, raw)
		wrote <- err
	}()
	br := bufio.NewReader(nc)
	method := http.MethodGet
	if i := strings.IndexByte(raw, ' '); i > 0 {
		method = raw[:i]
	}
	resp, err := http.ReadResponse(br, &http.Request{Method: method})
	if err != nil {
		nc.Close()
		<-wrote
		return nil, nil, fmt.Errorf("read response: %w", err)
	}
	if resp.StatusCode == http.StatusSwitchingProtocols {
		if err := <-wrote; err != nil {
			nc.Close()
			return nil, nil, err
		}
		_ = nc.SetDeadline(time.Time{})
		return &Conn{Conn: nc, R: br, Resp: resp}, nil, nil
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	nc.Close()
	<-wrote // a write error is expected when the server hung up early
	return &Conn{Resp: resp}, body, err
}

// Handshake performs a valid upgrade on path with extra header lines and
// fails unless the server answers 101.
func Handshake(addr, path, extra string) (*Conn, error) {
	c, _, err := Do(addr, UpgradeRequest(addr, path, extra), time.Now().Add(10*time.Second))
	if err != nil {
		return nil, err
	}
	if c.Resp.StatusCode != http.StatusSwitchingProtocols {
		return nil, fmt.Errorf("handshake: status %d", c.Resp.StatusCode)
	}
	return c, nil
}

// Frame is one WebSocket frame.
type Frame struct {
	Fin     bool
	RSV     byte // the three RSV bits, in the low bits
	Opcode  byte
	Masked  bool // on write: mask the payload (clients must); on read: it was masked
	Payload []byte
	// Length, when non-zero on write, replaces len(Payload) in the header:
	// it lets a test announce more than it sends.
	Length uint64
}

// WriteFrame writes f. Masked frames get a random key.
func (c *Conn) WriteFrame(f Frame) error {
	_, err := c.Write(AppendFrame(nil, f))
	return err
}

// AppendFrame appends the wire form of f to b.
func AppendFrame(b []byte, f Frame) []byte {
	b0 := f.Opcode&0x0f | (f.RSV&7)<<4
	if f.Fin {
		b0 |= 0x80
	}
	n := uint64(len(f.Payload))
	if f.Length != 0 {
		n = f.Length
	}
	var b1 byte
	if f.Masked {
		b1 = 0x80
	}
	switch {
	case n <= 125:
		b = append(b, b0, b1|byte(n))
	case n <= 0xffff:
		b = append(b, b0, b1|126)
		b = binary.BigEndian.AppendUint16(b, uint16(n))
	default:
		b = append(b, b0, b1|127)
		b = binary.BigEndian.AppendUint64(b, n)
	}
	if !f.Masked {
		return append(b, f.Payload...)
	}
	var key [4]byte
	_, _ = rand.Read(key[:])
	b = append(b, key[:]...)
	for i, p := range f.Payload {
		b = append(b, p^key[i&3])
	}
	return b
}

// ReadFrame reads one frame (payloads up to 16 MiB), unmasking it if needed.
func (c *Conn) ReadFrame() (Frame, error) {
	var h [2]byte
	if _, err := io.ReadFull(c.R, h[:]); err != nil {
		return Frame{}, err
	}
	f := Frame{Fin: h[0]&0x80 != 0, RSV: h[0] >> 4 & 7, Opcode: h[0] & 0x0f, Masked: h[1]&0x80 != 0}
	n := uint64(h[1] & 0x7f)
	switch n {
	case 126:
		var ext [2]byte
		if _, err := io.ReadFull(c.R, ext[:]); err != nil {
			return f, err
		}
		n = uint64(binary.BigEndian.Uint16(ext[:]))
	case 127:
		var ext [8]byte
		if _, err := io.ReadFull(c.R, ext[:]); err != nil {
			return f, err
		}
		n = binary.BigEndian.Uint64(ext[:])
	}
	if n > 16<<20 {
		return f, fmt.Errorf("frame of %d bytes", n)
	}
	var key [4]byte
	if f.Masked {
		if _, err := io.ReadFull(c.R, key[:]); err != nil {
			return f, err
		}
	}
	f.Payload = make([]byte, n)
	if _, err := io.ReadFull(c.R, f.Payload); err != nil {
		return f, err
	}
	if f.Masked {
		for i := range f.Payload {
			f.Payload[i] ^= key[i&3]
		}
	}
	return f, nil
}

// ClosePayload encodes a close frame's payload.
func ClosePayload(code uint16, reason string) []byte {
	return append(binary.BigEndian.AppendUint16(nil, code), reason...)
}

// CloseCode decodes a close frame's status code: 1005 when the payload is
// empty, -1 when it is malformed.
func (f Frame) CloseCode() int {
	switch len(f.Payload) {
	case 0:
		return 1005
	case 1:
		return -1
	}
	return int(binary.BigEndian.Uint16(f.Payload))
}

// ErrNoCloseFrame is returned by AwaitClose when the connection ended
// without a close frame.
var ErrNoCloseFrame = errors.New("connection closed without a close frame")

// AwaitClose reads frames until the server's close frame, ignoring data and
// ping frames (it never answers pings unless pong is set), answers the close
// frame with a masked close frame as RFC 6455 requires, and returns it. It
// gives up at deadline.
func (c *Conn) AwaitClose(deadline time.Time, pong bool) (Frame, error) {
	_ = c.SetReadDeadline(deadline)
	for {
		f, err := c.ReadFrame()
		if err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) {
				return f, ErrNoCloseFrame
			}
			var ne net.Error
			if errors.As(err, &ne) && !ne.Timeout() {
				return f, fmt.Errorf("%w: %v", ErrNoCloseFrame, err)
			}
			return f, err
		}
		switch f.Opcode {
		case OpClose:
			_ = c.SetWriteDeadline(deadline)
			_ = c.WriteFrame(Frame{Fin: true, Opcode: OpClose, Masked: true, Payload: f.Payload})
			return f, nil
		case OpPing:
			if pong {
				_ = c.SetWriteDeadline(deadline)
				if err := c.WriteFrame(Frame{Fin: true, Opcode: OpPong, Masked: true, Payload: f.Payload}); err != nil {
					return f, err
				}
			}
		}
	}
}

// AwaitEOF reads until the server closes the TCP connection and reports
// whether it did before deadline.
func (c *Conn) AwaitEOF(deadline time.Time) error {
	_ = c.SetReadDeadline(deadline)
	_, err := io.Copy(io.Discard, c.R)
	if err == nil || errors.Is(err, net.ErrClosed) {
		return nil
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return err
	}
	return nil // connection reset: closed too
}
