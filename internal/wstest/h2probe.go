package wstest

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"time"
)

// This file is a minimal HTTP/2 client, cleartext with prior knowledge
// (h2c), with the standard library only: enough to send an extended
// CONNECT (RFC 8441), which net/http's client refuses to send (it rejects
// the ":protocol" header name), to a server in a module that may not
// depend on golang.org/x/net. It encodes headers with HPACK's simplest
// form (RFC 7541 section 6.2.2: literal without indexing, new name, no
// Huffman coding) and decodes none: tests read the server's frames, not
// its headers.

// HTTP/2 frame types and flags (RFC 9113 section 6).
const (
	H2FrameData         byte = 0x0
	H2FrameHeaders      byte = 0x1
	H2FrameRSTStream    byte = 0x3
	H2FrameSettings     byte = 0x4
	H2FrameGoAway       byte = 0x7
	H2FrameWindowUpdate byte = 0x8

	H2FlagAck        byte = 0x1 // SETTINGS, PING
	H2FlagEndStream  byte = 0x1 // DATA, HEADERS
	H2FlagEndHeaders byte = 0x4 // HEADERS
)

// H2SettingEnableConnectProtocol is SETTINGS_ENABLE_CONNECT_PROTOCOL (RFC
// 8441 section 3): 1 when the server accepts extended CONNECT.
const H2SettingEnableConnectProtocol uint16 = 0x8

const h2Preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

// H2Frame is an HTTP/2 frame.
type H2Frame struct {
	Type, Flags byte
	Stream      uint32
	Payload     []byte
}

// H2Field is a header field; pseudo-header names start with ':'. Names
// must be lowercase, as HTTP/2 requires.
type H2Field struct{ Name, Value string }

// H2Conn is an HTTP/2 connection opened by DialH2C.
type H2Conn struct {
	net.Conn
	// Settings are the server's first SETTINGS.
	Settings map[uint16]uint32
}

// DialH2C connects to addr with HTTP/2 prior knowledge: it sends the
// client preface and an empty SETTINGS frame, reads frames until the
// server's SETTINGS, and acknowledges them. deadline bounds the whole
// exchange, and later reads and writes until the caller changes it.
func DialH2C(addr string, deadline time.Time) (*H2Conn, error) {
	nc, err := net.DialTimeout("tcp", addr, time.Until(deadline))
	if err != nil {
		return nil, err
	}
	c := &H2Conn{Conn: nc}
	_ = nc.SetDeadline(deadline)
	if _, err := io.WriteString(nc, h2Preface); err != nil {
		nc.Close()
		return nil, err
	}
	if err := c.WriteFrame(H2Frame{Type: H2FrameSettings}); err != nil {
		nc.Close()
		return nil, err
	}
	for c.Settings == nil {
		f, err := c.ReadFrame()
		if err != nil {
			nc.Close()
			return nil, fmt.Errorf("waiting for the server's SETTINGS: %w", err)
		}
		if f.Type != H2FrameSettings || f.Flags&H2FlagAck != 0 {
			continue // our SETTINGS' ACK, a WINDOW_UPDATE...
		}
		if len(f.Payload)%6 != 0 {
			nc.Close()
			return nil, fmt.Errorf("SETTINGS of %d bytes", len(f.Payload))
		}
		c.Settings = make(map[uint16]uint32)
		for p := f.Payload; len(p) > 0; p = p[6:] {
			c.Settings[binary.BigEndian.Uint16(p)] = binary.BigEndian.Uint32(p[2:])
		}
	}
	if err := c.WriteFrame(H2Frame{Type: H2FrameSettings, Flags: H2FlagAck}); err != nil {
		nc.Close()
		return nil, err
	}
	return c, nil
}

// ExtendedConnect reports whether the server's SETTINGS allow extended
// CONNECT (SETTINGS_ENABLE_CONNECT_PROTOCOL = 1).
func (c *H2Conn) ExtendedConnect() bool {
	return c.Settings[H2SettingEnableConnectProtocol] == 1
}

// WriteFrame writes f.
func (c *H2Conn) WriteFrame(f H2Frame) error {
	if len(f.Payload) >= 1<<24 {
		return errors.New("h2: frame payload too large")
	}
	b := make([]byte, 9, 9+len(f.Payload))
	n := len(f.Payload)
	b[0], b[1], b[2] = byte(n>>16), byte(n>>8), byte(n)
	b[3], b[4] = f.Type, f.Flags
	binary.BigEndian.PutUint32(b[5:], f.Stream&0x7fffffff)
	_, err := c.Write(append(b, f.Payload...))
	return err
}

// ReadFrame reads one frame (payloads up to 1 MiB).
func (c *H2Conn) ReadFrame() (H2Frame, error) {
	var h [9]byte
	if _, err := io.ReadFull(c.Conn, h[:]); err != nil {
		return H2Frame{}, err
	}
	n := int(h[0])<<16 | int(h[1])<<8 | int(h[2])
	if n > 1<<20 {
		return H2Frame{}, fmt.Errorf("h2: frame of %d bytes", n)
	}
	f := H2Frame{Type: h[3], Flags: h[4], Stream: binary.BigEndian.Uint32(h[5:]) & 0x7fffffff, Payload: make([]byte, n)}
	_, err := io.ReadFull(c.Conn, f.Payload)
	return f, err
}

// WriteHeaders sends fields on stream as one HEADERS frame with
// END_HEADERS (and END_STREAM when endStream is set).
func (c *H2Conn) WriteHeaders(stream uint32, endStream bool, fields ...H2Field) error {
	var block []byte
	for _, f := range fields {
		block = append(block, 0x00) // literal without indexing, new name
		block = appendHPACKString(block, f.Name)
		block = appendHPACKString(block, f.Value)
	}
	flags := H2FlagEndHeaders
	if endStream {
		flags |= H2FlagEndStream
	}
	return c.WriteFrame(H2Frame{Type: H2FrameHeaders, Flags: flags, Stream: stream, Payload: block})
}

// WebSocketConnect sends, on stream, the extended CONNECT of a WebSocket
// (RFC 8441 section 5) for path on authority (host:port), with extra
// fields after the required ones (sec-websocket-protocol, origin...). The
// stream stays open, as a WebSocket's does.
func (c *H2Conn) WebSocketConnect(stream uint32, authority, path string, extra ...H2Field) error {
	fields := append([]H2Field{
		{":method", "CONNECT"},
		{":protocol", "websocket"},
		{":scheme", "http"},
		{":path", path},
		{":authority", authority},
		{"sec-websocket-version", "13"},
	}, extra...)
	return c.WriteHeaders(stream, false, fields...)
}

// appendHPACKString appends s as an HPACK string literal without Huffman
// coding (RFC 7541 section 5.2): its length as a 7-bit-prefix integer,
// then its bytes.
func appendHPACKString(b []byte, s string) []byte {
	b = appendHPACKInt(b, 0x00, 7, uint64(len(s)))
	return append(b, s...)
}

// appendHPACKInt appends v as an integer with an n-bit prefix (RFC 7541
// section 5.1), the first byte's other bits being first.
func appendHPACKInt(b []byte, first byte, n uint, v uint64) []byte {
	limit := uint64(1)<<n - 1
	if v < limit {
		return append(b, first|byte(v))
	}
	b = append(b, first|byte(limit))
	for v -= limit; v >= 128; v >>= 7 {
		b = append(b, byte(v&0x7f)|0x80)
	}
	return append(b, byte(v))
}
