package chiws_test

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/chiws/chiws"
	"github.com/chiws/chiws/internal/wstest"
	"github.com/go-chi/chi/v5"
	"go.uber.org/zap/zapcore"
)

// TestBadHandshakes sends malformed upgrade requests over raw TCP (a client
// library refuses to) and checks each gets its defined status and log line,
// never reaches the route handler, and leaves the server serving.
func TestBadHandshakes(t *testing.T) {
	const (
		invalid = "websocket invalid handshake"
		origin  = "websocket origin rejected"
	)
	req := func(method, proto, lines string) func(host string) string {
		return func(host string) string {
			return method + " /ws " + proto + "\r\nHost: " + host + "\r\n" + lines + "\r\n"
		}
	}
	const (
		upgrade = "Upgrade: websocket\r\nConnection: Upgrade\r\n"
		v13     = "Sec-WebSocket-Version: 13\r\n"
		key     = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
	)
	valid := upgrade + v13 + key
	withOrigin := func(origin func(host string) string) func(host string) string {
		return func(host string) string {
			return req("GET", "HTTP/1.1", valid+"Origin: "+origin(host)+"\r\n")(host)
		}
	}
	huge := strings.Repeat("a", 2<<20) // over net/http's DefaultMaxHeaderBytes
	tests := []struct {
		name       string
		give       func(host string) string
		wantStatus int
		wantHeader map[string]string
		wantLog    string // "" when net/http answers before the middleware runs
		wantLevel  zapcore.Level
		wantReason string
	}{
		{"missing key", req("GET", "HTTP/1.1", upgrade+v13), 400, nil, invalid, zapcore.DebugLevel, "missing Sec-WebSocket-Key"},
		{"duplicated key", req("GET", "HTTP/1.1", valid+key), 400, nil, invalid, zapcore.DebugLevel, "several Sec-WebSocket-Key headers"},
		{"key of 15 bytes", req("GET", "HTTP/1.1", upgrade+v13+"Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAA\r\n"), 400, nil, invalid, zapcore.DebugLevel, "Sec-WebSocket-Key is not 16 bytes of base64"},
		{"key of 17 bytes", req("GET", "HTTP/1.1", upgrade+v13+"Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAAA=\r\n"), 400, nil, invalid, zapcore.DebugLevel, "Sec-WebSocket-Key is not 16 bytes of base64"},
		{"key not base64", req("GET", "HTTP/1.1", upgrade+v13+"Sec-WebSocket-Key: !!!!!!!!!!!!!!!!!!!!!!==\r\n"), 400, nil, invalid, zapcore.DebugLevel, "Sec-WebSocket-Key is not 16 bytes of base64"},
		{"empty key", req("GET", "HTTP/1.1", upgrade+v13+"Sec-WebSocket-Key: \r\n"), 400, nil, invalid, zapcore.DebugLevel, "Sec-WebSocket-Key is not 16 bytes of base64"},
		{"version 8", req("GET", "HTTP/1.1", upgrade+"Sec-WebSocket-Version: 8\r\n"+key), 426, map[string]string{"Sec-WebSocket-Version": "13"}, invalid, zapcore.DebugLevel, "Sec-WebSocket-Version must be 13"},
		{"no version", req("GET", "HTTP/1.1", upgrade+key), 426, map[string]string{"Sec-WebSocket-Version": "13"}, invalid, zapcore.DebugLevel, "Sec-WebSocket-Version must be 13"},
		{"POST", req("POST", "HTTP/1.1", valid+"Content-Length: 0\r\n"), 405, map[string]string{"Allow": "GET"}, invalid, zapcore.DebugLevel, "method must be GET"},
		{"HEAD", req("HEAD", "HTTP/1.1", valid), 405, map[string]string{"Allow": "GET"}, invalid, zapcore.DebugLevel, "method must be GET"},
		{"HTTP/1.0", req("GET", "HTTP/1.0", valid), 400, nil, invalid, zapcore.DebugLevel, "HTTP/1.1 or later required"},
		{"Connection keep-alive only", req("GET", "HTTP/1.1", "Upgrade: websocket\r\nConnection: keep-alive\r\n"+v13+key), 400, nil, invalid, zapcore.DebugLevel, "Connection header lacks the upgrade token (is a proxy dropping it?)"},
		{"body with Content-Length", func(host string) string { return req("GET", "HTTP/1.1", valid+"Content-Length: 5\r\n")(host) + "hello" }, 400, nil, invalid, zapcore.DebugLevel, "handshake must not have a body"},
		{"chunked body", func(host string) string {
			return req("GET", "HTTP/1.1", valid+"Transfer-Encoding: chunked\r\n")(host) + "5\r\nhello\r\n0\r\n\r\n"
		}, 400, nil, invalid, zapcore.DebugLevel, "handshake must not have a body"},
		{"2 MiB header", req("GET", "HTTP/1.1", valid+"X-Junk: "+huge+"\r\n"), 431, nil, "", 0, ""},
		{"Origin null", withOrigin(func(string) string { return "null" }), 403, nil, origin, zapcore.InfoLevel, "null origin"},
		{"Origin file://", withOrigin(func(string) string { return "file://" }), 403, nil, origin, zapcore.InfoLevel, "malformed Origin"},
		{"Origin non-ASCII", withOrigin(func(h string) string { return "http://exämple.com" }), 403, nil, origin, zapcore.InfoLevel, "malformed Origin"},
		{"Origin non-ASCII same host", withOrigin(func(h string) string { return "http://" + h + "\u00e9" }), 403, nil, origin, zapcore.InfoLevel, "malformed Origin"},
		{"Origin with path", withOrigin(func(h string) string { return "http://" + h + "/app" }), 403, nil, origin, zapcore.InfoLevel, "malformed Origin"},
		{"Origin with trailing slash", withOrigin(func(h string) string { return "http://" + h + "/" }), 403, nil, origin, zapcore.InfoLevel, "malformed Origin"},
		{"Origin with user info", withOrigin(func(h string) string { return "http://x@" + h }), 403, nil, origin, zapcore.InfoLevel, "malformed Origin"},
		{"Origin cross-site", withOrigin(func(string) string { return "https://evil.example" }), 403, nil, origin, zapcore.InfoLevel, "cross-origin (same-origin only)"},
		{"several Origin headers", func(host string) string {
			return req("GET", "HTTP/1.1", valid+"Origin: http://"+host+"\r\nOrigin: http://"+host+"\r\n")(host)
		}, 403, nil, origin, zapcore.InfoLevel, "several Origin headers"},
		// Controls: the same server accepts the well-formed versions.
		{"control: valid", req("GET", "HTTP/1.1", valid), 101, nil, "", 0, ""},
		{"control: same origin", withOrigin(func(h string) string { return "http://" + h }), 101, nil, "", 0, ""},
		{"control: lower-case tokens, lists", req("GET", "HTTP/1.1", "upgrade: WebSocket\r\nconnection: keep-alive, upgrade\r\nsec-websocket-version: 13\r\n"+key), 101, nil, "", 0, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			calls := newCalls()
			ws, srv, logs := relServer(t, chiws.Options{}, nil, func(r chi.Router) {
				r.HandleFunc("/ws", calls.wrap(echoErr))
			})
			host := hostOf(srv)
			c, body, err := wstest.Do(host, tt.give(host), time.Now().Add(testTimeout))
			if err != nil {
				t.Fatal(err)
			}
			if got := c.Resp.StatusCode; got != tt.wantStatus {
				t.Fatalf("status = %d, want %d (body %q)", got, tt.wantStatus, body)
			}
			for k, v := range tt.wantHeader {
				if got := c.Resp.Header.Get(k); got != v {
					t.Errorf("%s = %q, want %q", k, got, v)
				}
			}
			if tt.wantStatus == http.StatusSwitchingProtocols {
				c.Close()
				calls.await(t, 1)
				return
			}
			if tt.wantStatus != 431 && c.Resp.Request.Method != http.MethodHead {
				if want := http.StatusText(tt.wantStatus) + "\n"; string(body) != want {
					t.Errorf("body = %q, want %q", body, want)
				}
			}
			if n := calls.started.Load(); n != 0 {
				t.Errorf("handler called %d times", n)
			}
			st := ws.Stats()
			if st.Accepted != 0 || st.Active != 0 {
				t.Errorf("stats after a rejected handshake: %+v", st)
			}
			if tt.wantLog != "" {
				entries := logs.FilterMessage(tt.wantLog).All()
				if len(entries) != 1 {
					t.Fatalf("%d %q log entries; all logs: %v", len(entries), tt.wantLog, logs.All())
				}
				e := entries[0]
				if e.Level != tt.wantLevel {
					t.Errorf("level = %v, want %v", e.Level, tt.wantLevel)
				}
				if got := e.ContextMap()["reason"]; got != tt.wantReason {
					t.Errorf("reason = %q, want %q", got, tt.wantReason)
				}
				if tt.wantStatus == http.StatusForbidden && st.RejectedOrigin != 1 ||
					tt.wantStatus != http.StatusForbidden && st.RejectedHandshake != 1 {
					t.Errorf("stats: %+v", st)
				}
			} else if n := logs.Len(); n != 0 {
				t.Errorf("unexpected logs: %v", logs.All())
			}
			// No panic, and the server still serves.
			ok := dial(t, wsURL(srv, "/ws"), nil)
			ok.CloseNow()
			calls.await(t, 1)
		})
	}
}
