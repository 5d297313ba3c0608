package broadcast

import (
	"bytes"
	"testing"

	"github.com/coder/websocket"
)

func TestEnvelope(t *testing.T) {
	tests := []struct {
		name    string
		give    []byte
		wantTyp websocket.MessageType
		wantErr bool
	}{
		{"text", encode(websocket.MessageText, []byte("hi")), websocket.MessageText, false},
		{"binary", encode(websocket.MessageBinary, []byte{0, 0xff}), websocket.MessageBinary, false},
		{"empty binary", encode(websocket.MessageBinary, nil), websocket.MessageBinary, false},
		{"nil", nil, 0, true},
		{"one byte", []byte{1}, 0, true},
		{"future version", []byte{2, 1, 'x'}, 0, true},
		{"bad type", []byte{1, 9, 'x'}, 0, true},
		{"text not UTF-8", []byte{1, 1, 0xff}, 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			typ, p, err := decode(tt.give)
			if (err != nil) != tt.wantErr {
				t.Fatalf("decode error %v, want error %v", err, tt.wantErr)
			}
			if err == nil && (typ != tt.wantTyp || !bytes.Equal(p, tt.give[envelopeLen:])) {
				t.Fatalf("decode = %v %q", typ, p)
			}
		})
	}
}

// FuzzDecode: any bytes from a broker decode or fail, never panic, and
// what decodes re-encodes to the same bytes.
func FuzzDecode(f *testing.F) {
	f.Add(encode(websocket.MessageText, []byte("hi")))
	f.Add([]byte{1, 2})
	f.Add([]byte{2, 1, 'x'})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		typ, p, err := decode(b)
		if err != nil {
			return
		}
		if !bytes.Equal(encode(typ, p), b) {
			t.Fatalf("round trip changed %q", b)
		}
	})
}
