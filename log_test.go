package chiws_test

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/chiws/chiws"
	"github.com/chiws/chiws/internal/wstest"
	"github.com/coder/websocket"
	"github.com/go-chi/chi/v5"
	"github.com/go-chi/chi/v5/middleware"
	"go.uber.org/zap/zapcore"
)

// TestLogLevels: at Info, a normal socket's life logs nothing; accepted and
// closed are Debug; nothing is logged per message.
func TestLogLevels(t *testing.T) {
	logger, logs := observedLogger()
	_, srv := server(t, chiws.Options{Logger: logger}, func(r chi.Router) { r.Get("/ws", echo) })
	c := dial(t, wsURL(srv, "/ws"), nil)
	ctx := testCtx(t)
	for range 10 {
		c.Write(ctx, websocket.MessageText, []byte("m"))
		if _, _, err := c.Read(ctx); err != nil {
			t.Fatal(err)
		}
	}
	c.Close(websocket.StatusNormalClosure, "")
	waitFor(t, "closed log", func() bool { return logs.FilterMessage("websocket closed").Len() == 1 })
	for _, e := range logs.All() {
		if e.Level > -1 { // above Debug
			t.Errorf("normal socket logged at %v: %s", e.Level, e.Message)
		}
	}
	if n := logs.Len(); n != 2 {
		t.Errorf("%d log entries for one socket, want 2 (accepted, closed): %v", n, messages(logs))
	}
}

// TestLogsAndBodiesBounded sends 8 KiB attacker-chosen values in every
// place a log line or error body could echo them, and checks every log
// field is clipped (the core's limit is 256 bytes plus a marker) and error
// bodies carry the status text only.
func TestLogsAndBodiesBounded(t *testing.T) {
	const maxField = 256 + len("...(truncated)")
	big := strings.Repeat("A", 8<<10)
	bigHost := strings.Repeat("a", 8<<10) + ".example"
	key := "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
	upgrade := func(host, path, extra string) string {
		return "GET " + path + " HTTP/1.1\r\nHost: " + host + "\r\n" +
			"Upgrade: websocket\r\nConnection: Upgrade\r\n" + extra + "\r\n"
	}
	tests := []struct {
		name       string
		give       func(host string) string
		wantStatus int
		wantLogs   []string
	}{
		{"8 KiB Origin", func(h string) string {
			return upgrade(h, "/ws", "Sec-WebSocket-Version: 13\r\n"+key+"Origin: https://"+big+".example\r\n")
		}, 403, []string{"websocket origin rejected"}},
		{"8 KiB Host, cross-origin", func(h string) string {
			return upgrade(bigHost, "/ws", "Sec-WebSocket-Version: 13\r\n"+key+"Origin: https://evil.example\r\n")
		}, 403, []string{"websocket origin rejected"}},
		{"8 KiB path, bad version", func(h string) string {
			return upgrade(h, "/ws/"+big, "Sec-WebSocket-Version: 8\r\n"+key)
		}, 426, []string{"websocket invalid handshake"}},
		{"8 KiB key", func(h string) string {
			return upgrade(h, "/ws", "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: "+big+"\r\n")
		}, 400, []string{"websocket invalid handshake"}},
		{"8 KiB subprotocol, bad version", func(h string) string {
			return upgrade(h, "/ws", "Sec-WebSocket-Version: 7\r\n"+key+"Sec-WebSocket-Protocol: "+big+"\r\n")
		}, 426, []string{"websocket invalid handshake"}},
		{"8 KiB path, subprotocol and request ID, accepted", func(h string) string {
			return upgrade(h, "/ws/"+big, "Sec-WebSocket-Version: 13\r\n"+key+
				"Sec-WebSocket-Protocol: chat, "+big+"\r\nX-Request-Id: "+big+"\r\n")
		}, 101, []string{"websocket accepted", "websocket closed"}},
		{"8 KiB unknown subprotocol, accepted", func(h string) string {
			return upgrade(h, "/ws/x", "Sec-WebSocket-Version: 13\r\n"+key+"Sec-WebSocket-Protocol: "+big+"\r\n")
		}, 101, []string{"websocket accepted", "websocket closed"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			calls := newCalls()
			_, srv, logs := relServer(t, chiws.Options{Subprotocols: []string{"chat"}}, nil, func(r chi.Router) {
				r.With(middleware.RequestID).HandleFunc("/ws/*", calls.wrap(echoErr))
				r.HandleFunc("/ws", calls.wrap(echoErr))
			})
			host := hostOf(srv)
			c, body, err := wstest.Do(host, tt.give(host), time.Now().Add(testTimeout))
			if err != nil {
				t.Fatal(err)
			}
			if c.Resp.StatusCode != tt.wantStatus {
				t.Fatalf("status %d, want %d", c.Resp.StatusCode, tt.wantStatus)
			}
			if tt.wantStatus == http.StatusSwitchingProtocols {
				if p := c.Resp.Header.Get("Sec-WebSocket-Protocol"); len(p) > 16 {
					t.Errorf("response echoes %d bytes of subprotocol", len(p))
				}
				c.Close()
				calls.await(t, 1)
			} else if want := http.StatusText(tt.wantStatus) + "\n"; string(body) != want {
				t.Errorf("body = %.80q (%d bytes), want %q", body, len(body), want)
			}
			for _, msg := range tt.wantLogs {
				// "websocket closed" is written just after the handler returns.
				waitFor(t, msg+" log", func() bool { return logs.FilterMessage(msg).Len() == 1 })
			}
			for _, e := range logs.All() {
				if len(e.Message) > 512 {
					t.Errorf("log message of %d bytes", len(e.Message))
				}
				for _, f := range e.Context {
					var v string
					switch f.Type {
					case zapcore.StringType:
						v = f.String
					case zapcore.ErrorType, zapcore.StringerType, zapcore.ReflectType:
						v = fmt.Sprint(f.Interface)
					default:
						continue
					}
					if len(v) > maxField {
						t.Errorf("%q: field %s has %d bytes", e.Message, f.Key, len(v))
					}
				}
			}
		})
	}
}
