package broadcast

import (
	"errors"
	"fmt"
	"unicode/utf8"

	"github.com/coder/websocket"
)

// A message on the broker is an envelope: one version byte, one byte for
// the WebSocket message type, then the payload. Brokers carry opaque
// bytes, so the type has to travel inside; the version lets a later
// format be told apart (and dropped by hubs that do not know it) during a
// rolling upgrade.
const (
	envelopeV1  = 1
	envelopeLen = 2
)

var errMalformed = errors.New("malformed broker message")

func encode(typ websocket.MessageType, p []byte) []byte {
	b := make([]byte, envelopeLen+len(p))
	b[0] = envelopeV1
	b[1] = byte(typ)
	copy(b[envelopeLen:], p)
	return b
}

// decode checks an envelope from the broker. Anything may arrive there
// (another application on the same subject, a newer version), so every
// field is checked; the returned payload aliases b.
func decode(b []byte) (websocket.MessageType, []byte, error) {
	if len(b) < envelopeLen {
		return 0, nil, fmt.Errorf("%w: %d bytes", errMalformed, len(b))
	}
	if b[0] != envelopeV1 {
		return 0, nil, fmt.Errorf("%w: version %d", errMalformed, b[0])
	}
	typ := websocket.MessageType(b[1])
	p := b[envelopeLen:]
	switch typ {
	case websocket.MessageBinary:
	case websocket.MessageText:
		if !utf8.Valid(p) {
			return 0, nil, fmt.Errorf("%w: text is not UTF-8", errMalformed)
		}
	default:
		return 0, nil, fmt.Errorf("%w: message type %d", errMalformed, b[1])
	}
	return typ, p, nil
}
