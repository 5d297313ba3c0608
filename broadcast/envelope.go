package broadcast

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"
	"unicode/utf8"

	"github.com/coder/websocket"
)

// Envelope is a message as it travels on the broker. Brokers carry opaque
// bytes, so the WebSocket message type and the hub's own fields travel
// inside; AppendEnvelope and ParseEnvelope are the format's reference, and
// docs/broadcast.md gives its byte values for publishers in other
// languages.
//
// Two versions exist, and every hub reads both:
//
//	version 1:  0x01 | type | payload
//	version 2:  0x02 | type | flags | fields... | payload
//
// type is 0x01 for text (valid UTF-8) and 0x02 for binary. The flags byte
// says which fields follow, in this order; a bit not listed here makes the
// message malformed, so that a field added later is never misread:
//
//	0x01 time      8 bytes: Unix nanoseconds, big-endian
//	0x02 sender    1 byte n (1-255), then n bytes
//	0x04 position  8 bytes offset, big-endian; 1 byte n (0-255), then n bytes of epoch
//
// The payload is everything after the fields.
type Envelope struct {
	Type    websocket.MessageType // text or binary
	Payload []byte

	// Time is when the message was published; zero when unknown.
	Time time.Time

	// Sender is the Member.Key of the member that must not receive the
	// message (Hub.PublishExcept); empty for none.
	Sender string

	// Offset and Epoch are the message's position in its topic's history:
	// Epoch changes when the history's continuity is lost. The position
	// is sent when Epoch is not empty. Hubs do not use it yet.
	Offset uint64
	Epoch  string
}

const (
	envelopeV1 = 1
	envelopeV2 = 2

	flagTime     = 0x01
	flagSender   = 0x02
	flagPosition = 0x04
	flagsKnown   = flagTime | flagSender | flagPosition
)

// ErrMalformed means bytes from a broker that are not an Envelope.
var ErrMalformed = errors.New("malformed broker message")

// AppendEnvelope appends e's encoding to dst: version 1 when e has no
// field other than its type and payload, version 2 otherwise. It fails
// with ErrInvalidMessage for a type other than text or binary, text that is
// not UTF-8, or a Sender or Epoch over 255 bytes.
func AppendEnvelope(dst []byte, e Envelope) ([]byte, error) {
	if err := e.check(); err != nil {
		return dst, err
	}
	var flags byte
	if !e.Time.IsZero() {
		flags |= flagTime
	}
	if e.Sender != "" {
		flags |= flagSender
	}
	if e.Epoch != "" {
		flags |= flagPosition
	}
	if flags == 0 {
		dst = append(dst, envelopeV1, byte(e.Type))
		return append(dst, e.Payload...), nil
	}
	dst = append(dst, envelopeV2, byte(e.Type), flags)
	if flags&flagTime != 0 {
		dst = binary.BigEndian.AppendUint64(dst, uint64(e.Time.UnixNano()))
	}
	if flags&flagSender != 0 {
		dst = append(append(dst, byte(len(e.Sender))), e.Sender...)
	}
	if flags&flagPosition != 0 {
		dst = binary.BigEndian.AppendUint64(dst, e.Offset)
		dst = append(append(dst, byte(len(e.Epoch))), e.Epoch...)
	}
	return append(dst, e.Payload...), nil
}

func (e *Envelope) check() error {
	switch {
	case e.Type != websocket.MessageText && e.Type != websocket.MessageBinary:
		return fmt.Errorf("%w: message type %d", ErrInvalidMessage, e.Type)
	case e.Type == websocket.MessageText && !utf8.Valid(e.Payload):
		return fmt.Errorf("%w: text is not UTF-8", ErrInvalidMessage)
	case len(e.Sender) > 255:
		return fmt.Errorf("%w: sender of %d bytes, limit 255", ErrInvalidMessage, len(e.Sender))
	case len(e.Epoch) > 255:
		return fmt.Errorf("%w: epoch of %d bytes, limit 255", ErrInvalidMessage, len(e.Epoch))
	}
	return nil
}

// ParseEnvelope decodes bytes from a broker. Anything may arrive there
// (another application on the same channel, a newer version during a
// rolling upgrade), so every field is checked; errors wrap ErrMalformed.
// The returned Payload aliases b.
func ParseEnvelope(b []byte) (Envelope, error) {
	var e Envelope
	if len(b) < 2 {
		return e, fmt.Errorf("%w: %d bytes", ErrMalformed, len(b))
	}
	e.Type = websocket.MessageType(b[1])
	switch b[0] {
	case envelopeV1:
		b = b[2:]
	case envelopeV2:
		if len(b) < 3 {
			return e, fmt.Errorf("%w: %d bytes", ErrMalformed, len(b))
		}
		flags := b[2]
		if flags&^flagsKnown != 0 {
			return e, fmt.Errorf("%w: unknown flags %#x", ErrMalformed, flags&^flagsKnown)
		}
		b = b[3:]
		var ok bool
		if flags&flagTime != 0 {
			var ns uint64
			if ns, b, ok = uint64Field(b); !ok {
				return e, fmt.Errorf("%w: short time", ErrMalformed)
			}
			e.Time = time.Unix(0, int64(ns))
		}
		if flags&flagSender != 0 {
			if e.Sender, b, ok = stringField(b); !ok || e.Sender == "" {
				return e, fmt.Errorf("%w: bad sender", ErrMalformed)
			}
		}
		if flags&flagPosition != 0 {
			if e.Offset, b, ok = uint64Field(b); !ok {
				return e, fmt.Errorf("%w: short position", ErrMalformed)
			}
			if e.Epoch, b, ok = stringField(b); !ok || e.Epoch == "" {
				return e, fmt.Errorf("%w: bad epoch", ErrMalformed)
			}
		}
	default:
		return e, fmt.Errorf("%w: version %d", ErrMalformed, b[0])
	}
	e.Payload = b
	if err := e.check(); err != nil {
		return Envelope{}, fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	return e, nil
}

func uint64Field(b []byte) (uint64, []byte, bool) {
	if len(b) < 8 {
		return 0, b, false
	}
	return binary.BigEndian.Uint64(b), b[8:], true
}

func stringField(b []byte) (string, []byte, bool) {
	if len(b) < 1 || len(b) < 1+int(b[0]) {
		return "", b, false
	}
	n := int(b[0])
	return string(b[1 : 1+n]), b[1+n:], true
}
