package chiws_test

import (
	"bytes"
	"context"
	"errors"
	"testing"
	"time"

	"github.com/chiws/chiws"
	"github.com/chiws/chiws/internal/wstest"
	"github.com/go-chi/chi/v5"
)

// TestBadFrames writes invalid frames after a real handshake and checks the
// server closes with the RFC 6455 code, closes the TCP connection, returns
// from the handler and releases the socket.
func TestBadFrames(t *testing.T) {
	const readLimit = 1024
	text := func(p string) wstest.Frame {
		return wstest.Frame{Fin: true, Opcode: wstest.OpText, Masked: true, Payload: []byte(p)}
	}
	closeFrame := func(p []byte) wstest.Frame {
		return wstest.Frame{Fin: true, Opcode: wstest.OpClose, Masked: true, Payload: p}
	}
	// A fragmented message that never ends: continuation frames keep coming.
	var endless []wstest.Frame
	endless = append(endless, wstest.Frame{Opcode: wstest.OpText, Masked: true, Payload: bytes.Repeat([]byte("a"), 100)})
	for i := 0; i < 2*readLimit/100; i++ {
		endless = append(endless, wstest.Frame{Opcode: wstest.OpContinuation, Masked: true, Payload: bytes.Repeat([]byte("a"), 100)})
	}
	tests := []struct {
		name     string
		give     []wstest.Frame
		wantCode int
	}{
		{"unmasked text frame", []wstest.Frame{{Fin: true, Opcode: wstest.OpText, Payload: []byte("hi")}}, 1002},
		{"invalid UTF-8 text", []wstest.Frame{text("ok \xff\xfe")}, 1007},
		{"truncated UTF-8 text", []wstest.Frame{text("\xe2\x82")}, 1007},
		{"invalid UTF-8 across fragments", []wstest.Frame{
			{Opcode: wstest.OpText, Masked: true, Payload: []byte("ab\xc3")},
			{Fin: true, Opcode: wstest.OpContinuation, Masked: true, Payload: []byte("(")},
		}, 1007},
		{"message over ReadLimit", []wstest.Frame{{Fin: true, Opcode: wstest.OpBinary, Masked: true, Payload: make([]byte, 2*readLimit)}}, 1009},
		{"message over ReadLimit announced", []wstest.Frame{{Fin: true, Opcode: wstest.OpBinary, Masked: true, Length: 1 << 40, Payload: make([]byte, 2*readLimit)}}, 1009},
		{"fragmented message that never ends", endless, 1009},
		{"close code 999", []wstest.Frame{closeFrame(wstest.ClosePayload(999, ""))}, 1002},
		{"close code 1005", []wstest.Frame{closeFrame(wstest.ClosePayload(1005, ""))}, 1002},
		{"close code 1006", []wstest.Frame{closeFrame(wstest.ClosePayload(1006, ""))}, 1002},
		{"close code 5000", []wstest.Frame{closeFrame(wstest.ClosePayload(5000, ""))}, 1002},
		{"close payload of 1 byte", []wstest.Frame{closeFrame([]byte{3})}, 1002},
		{"reserved opcode", []wstest.Frame{{Fin: true, Opcode: 0x3, Masked: true}}, 1002},
		{"RSV1 without compression", []wstest.Frame{{Fin: true, RSV: 4, Opcode: wstest.OpText, Masked: true, Payload: []byte("x")}}, 1002},
		{"fragmented ping", []wstest.Frame{{Opcode: wstest.OpPing, Masked: true}}, 1002},
		{"ping over 125 bytes", []wstest.Frame{{Fin: true, Opcode: wstest.OpPing, Masked: true, Payload: make([]byte, 126)}}, 1002},
		{"continuation without a start", []wstest.Frame{{Fin: true, Opcode: wstest.OpContinuation, Masked: true, Payload: []byte("x")}}, 1002},
		{"data after close", []wstest.Frame{closeFrame(wstest.ClosePayload(1000, "bye")), text("after close")}, 1000},
		// Control: a well-formed exchange is echoed, then closed normally.
		{"control: valid text then close", []wstest.Frame{text("héllo"), closeFrame(wstest.ClosePayload(1000, ""))}, 1000},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			calls := newCalls()
			ws, srv, _ := relServer(t, chiws.Options{ReadLimit: readLimit}, nil, func(r chi.Router) {
				r.HandleFunc("/ws", calls.wrap(echoErr))
			})
			c, err := wstest.Handshake(hostOf(srv), "/ws", "")
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			var wire []byte
			for _, f := range tt.give {
				wire = wstest.AppendFrame(wire, f)
			}
			// The server may hang up before it has read everything.
			go c.Write(wire)

			deadline := time.Now().Add(testTimeout)
			f, err := c.AwaitClose(deadline, false)
			if err != nil {
				t.Fatalf("no close frame: %v", err)
			}
			if got := f.CloseCode(); got != tt.wantCode {
				t.Errorf("close code = %d (%q), want %d", got, f.Payload, tt.wantCode)
			}
			if err := c.AwaitEOF(deadline); err != nil {
				t.Errorf("server did not close the connection: %v", err)
			}
			herr := calls.await(t, 1)[0]
			if herr == nil {
				t.Error("handler returned without a read error")
			}
			waitActive(t, ws, 0)
			if st := ws.Stats(); st.EarlyReturns != 0 || st.Panics != 0 {
				t.Errorf("stats: %+v", st)
			}
		})
	}
}

// TestStalledFragmentedMessage: a client that starts a message and then goes
// silent (it does not even answer pings) holds the handler in Read. What
// bounds it is the keep-alive: the socket is aborted KeepAliveInterval +
// KeepAliveTimeout after the last pong.
func TestStalledFragmentedMessage(t *testing.T) {
	calls := newCalls()
	ws, srv, logs := relServer(t, chiws.Options{
		KeepAliveInterval: 100 * time.Millisecond,
		KeepAliveTimeout:  200 * time.Millisecond,
	}, nil, func(r chi.Router) {
		r.HandleFunc("/ws", calls.wrap(echoErr))
	})
	c, err := wstest.Handshake(hostOf(srv), "/ws", "")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.WriteFrame(wstest.Frame{Opcode: wstest.OpText, Masked: true, Payload: []byte("never finished")}); err != nil {
		t.Fatal(err)
	}
	// The client reads (and drops) pings but never answers.
	if _, err := c.AwaitClose(time.Now().Add(testTimeout), false); !errors.Is(err, wstest.ErrNoCloseFrame) {
		t.Fatalf("want the connection aborted without a close frame, got %v", err)
	}
	if herr := calls.await(t, 1)[0]; herr == nil {
		t.Error("handler returned without a read error")
	}
	waitActive(t, ws, 0)
	if st := ws.Stats(); st.KeepAliveTimeouts != 1 {
		t.Errorf("KeepAliveTimeouts = %d, want 1", st.KeepAliveTimeouts)
	}
	if n := logs.FilterMessage("websocket keep-alive timeout; aborting").Len(); n != 1 {
		t.Errorf("%d keep-alive timeout logs, want 1", n)
	}
}

// TestStalledFragmentedMessageAnsweringPings: a peer that answers pings is
// alive, so keep-alive keeps it open however long its message takes. The
// bound is then the handler's read context (and ReadLimit if it keeps
// sending): here a 300 ms read deadline ends it with the deadline error.
func TestStalledFragmentedMessageAnsweringPings(t *testing.T) {
	calls := newCalls()
	ws, srv, _ := relServer(t, chiws.Options{
		KeepAliveInterval: 50 * time.Millisecond,
		KeepAliveTimeout:  5 * time.Second,
	}, nil, func(r chi.Router) {
		r.HandleFunc("/ws", calls.accepted(func(c *chiws.Conn) error {
			ctx, cancel := context.WithTimeout(c.Context(), 300*time.Millisecond)
			defer cancel()
			_, _, err := c.Read(ctx)
			return err
		}))
	})
	c, err := wstest.Handshake(hostOf(srv), "/ws", "")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.WriteFrame(wstest.Frame{Opcode: wstest.OpText, Masked: true, Payload: []byte("never finished")}); err != nil {
		t.Fatal(err)
	}
	go c.AwaitClose(time.Now().Add(testTimeout), true) // answers pings
	if herr := calls.await(t, 1)[0]; !errors.Is(herr, context.DeadlineExceeded) {
		t.Errorf("handler error = %v, want the read deadline", herr)
	}
	waitActive(t, ws, 0)
	if st := ws.Stats(); st.KeepAliveTimeouts != 0 {
		t.Errorf("a peer answering pings was timed out: %+v", st)
	}
}
