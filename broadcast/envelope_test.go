package broadcast

import (
	"bytes"
	"errors"
	"reflect"
	"testing"
	"time"

	"github.com/coder/websocket"
)

func TestEnvelope(t *testing.T) {
	at := time.Unix(1700000000, 123456789)
	tests := []struct {
		name    string
		give    []byte
		want    Envelope
		wantErr error
	}{
		{"v1 text", []byte("\x01\x01hi"), Envelope{Type: websocket.MessageText, Payload: []byte("hi")}, nil},
		{"v1 binary", []byte{1, 2, 0, 0xff}, Envelope{Type: websocket.MessageBinary, Payload: []byte{0, 0xff}}, nil},
		{"v1 empty binary", []byte{1, 2}, Envelope{Type: websocket.MessageBinary, Payload: []byte{}}, nil},
		{"v2 no fields", []byte{2, 1, 0, 'x'}, Envelope{Type: websocket.MessageText, Payload: []byte("x")}, nil},
		{"v2 time", append([]byte{2, 1, 1, 0x17, 0x97, 0x9c, 0xfe, 0x3d, 0x85, 0xcd, 0x15}, 'x'),
			Envelope{Type: websocket.MessageText, Payload: []byte("x"), Time: at}, nil},
		{"v2 sender", []byte("\x02\x02\x02\x03abcP"), Envelope{Type: websocket.MessageBinary, Payload: []byte("P"), Sender: "abc"}, nil},
		{"v2 position", []byte("\x02\x01\x04\x00\x00\x00\x00\x00\x00\x01\x00\x02e1hi"),
			Envelope{Type: websocket.MessageText, Payload: []byte("hi"), Offset: 256, Epoch: "e1"}, nil},
		{"nil", nil, Envelope{}, ErrMalformed},
		{"one byte", []byte{1}, Envelope{}, ErrMalformed},
		{"v2 without flags", []byte{2, 1}, Envelope{}, ErrMalformed},
		{"future version", []byte{3, 1, 'x'}, Envelope{}, ErrMalformed},
		{"unknown flag", []byte{2, 1, 8, 'x'}, Envelope{}, ErrMalformed},
		{"short time", []byte{2, 1, 1, 0, 0}, Envelope{}, ErrMalformed},
		{"sender past the end", []byte("\x02\x01\x02\x09ab"), Envelope{}, ErrMalformed},
		{"empty sender", []byte("\x02\x01\x02\x00x"), Envelope{}, ErrMalformed},
		{"empty epoch", []byte("\x02\x01\x04\x00\x00\x00\x00\x00\x00\x00\x01\x00x"), Envelope{}, ErrMalformed},
		{"bad type", []byte{1, 9, 'x'}, Envelope{}, ErrMalformed},
		{"text not UTF-8", []byte{1, 1, 0xff}, Envelope{}, ErrMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e, err := ParseEnvelope(tt.give)
			if !errors.Is(err, tt.wantErr) || (err == nil) != (tt.wantErr == nil) {
				t.Fatalf("ParseEnvelope error %v, want %v", err, tt.wantErr)
			}
			if err != nil {
				return
			}
			if !e.Time.Equal(tt.want.Time) {
				t.Fatalf("Time = %v, want %v", e.Time, tt.want.Time)
			}
			e.Time, tt.want.Time = time.Time{}, time.Time{}
			if !reflect.DeepEqual(e, tt.want) {
				t.Fatalf("ParseEnvelope = %+v, want %+v", e, tt.want)
			}
		})
	}
}

func TestAppendEnvelopeRefuses(t *testing.T) {
	long := string(bytes.Repeat([]byte{'s'}, 256))
	for _, e := range []Envelope{
		{Type: websocket.MessageType(3)},
		{Type: websocket.MessageText, Payload: []byte{0xff}},
		{Type: websocket.MessageText, Sender: long},
		{Type: websocket.MessageText, Epoch: long},
	} {
		if _, err := AppendEnvelope(nil, e); !errors.Is(err, ErrInvalidMessage) {
			t.Errorf("AppendEnvelope(%.40v) error %v, want ErrInvalidMessage", e, err)
		}
	}
}

// FuzzParseEnvelope: any bytes from a broker parse or fail, never panic,
// and what parses encodes back to bytes that parse to the same envelope.
func FuzzParseEnvelope(f *testing.F) {
	f.Add([]byte("\x01\x01hi"))
	f.Add([]byte{1, 2})
	f.Add([]byte("\x02\x02\x07\x00\x00\x00\x00\x00\x00\x00\x01\x03abc\x00\x00\x00\x00\x00\x00\x00\x09\x01eP"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		e, err := ParseEnvelope(b)
		if err != nil {
			return
		}
		out, err := AppendEnvelope(nil, e)
		if err != nil {
			t.Fatalf("AppendEnvelope of a parsed %q: %v", b, err)
		}
		again, err := ParseEnvelope(out)
		if err != nil || !again.Time.Equal(e.Time) || again.Sender != e.Sender || again.Offset != e.Offset ||
			again.Epoch != e.Epoch || again.Type != e.Type || !bytes.Equal(again.Payload, e.Payload) {
			t.Fatalf("round trip of %q: %+v, %v; want %+v", b, again, err, e)
		}
	})
}
