package chiws_test

import (
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/chiws/chiws"
	"github.com/chiws/chiws/internal/wstest"
	"github.com/go-chi/chi/v5"
	"go.uber.org/zap/zapcore"
)

const validKey = "dGhlIHNhbXBsZSBub25jZQ==" // RFC 6455's example: 16 bytes

// upgradeRequest returns a valid handshake request; edit modifies it.
func upgradeRequest(edit func(r *http.Request)) *http.Request {
	r := httptest.NewRequest(http.MethodGet, "http://server.com/ws", nil)
	r.Header.Set("Connection", "Upgrade")
	r.Header.Set("Upgrade", "websocket")
	r.Header.Set("Sec-WebSocket-Version", "13")
	r.Header.Set("Sec-WebSocket-Key", validKey)
	if edit != nil {
		edit(r)
	}
	return r
}

func set(k, v string) func(*http.Request) { return func(r *http.Request) { r.Header.Set(k, v) } }

var handshakeTests = []struct {
	name       string
	edit       func(r *http.Request)
	wantWS     bool // IsWebSocketRequest inside the handler
	wantStatus int  // 0: the handler ran
}{
	{"valid", nil, true, 0},
	{"connection list", set("Connection", "keep-alive, Upgrade"), true, 0},
	{"connection case", set("Connection", "UPGRADE"), true, 0},
	{"connection spaces", set("Connection", "keep-alive ,\tupgrade "), true, 0},
	{"connection two lines", func(r *http.Request) {
		r.Header["Connection"] = []string{"keep-alive", "Upgrade"}
	}, true, 0},
	{"upgrade case", set("Upgrade", "WebSocket"), true, 0},
	{"upgrade list", set("Upgrade", "h2c, websocket"), true, 0},

	{"plain request", func(r *http.Request) {
		r.Header = http.Header{}
	}, false, 0},
	{"other upgrade", set("Upgrade", "h2c"), false, 0},
	{"upgrade token substring", set("Upgrade", "websocketx"), false, 0},

	{"post", func(r *http.Request) { r.Method = http.MethodPost }, false, http.StatusMethodNotAllowed},
	{"head", func(r *http.Request) { r.Method = http.MethodHead }, false, http.StatusMethodNotAllowed},
	{"http/1.0", func(r *http.Request) { r.Proto, r.ProtoMajor, r.ProtoMinor = "HTTP/1.0", 1, 0 }, false, http.StatusBadRequest},
	{"connection keep-alive only", set("Connection", "keep-alive"), false, http.StatusBadRequest},
	{"connection missing", func(r *http.Request) { r.Header.Del("Connection") }, false, http.StatusBadRequest},
	{"connection substring", set("Connection", "upgraded"), false, http.StatusBadRequest},
	{"version 8", set("Sec-WebSocket-Version", "8"), false, http.StatusUpgradeRequired},
	{"version missing", func(r *http.Request) { r.Header.Del("Sec-WebSocket-Version") }, false, http.StatusUpgradeRequired},
	{"version 130", set("Sec-WebSocket-Version", "130"), false, http.StatusUpgradeRequired},
	// coder/websocket, which upgrades, takes exactly "13".
	{"version list", set("Sec-WebSocket-Version", "8, 13"), false, http.StatusUpgradeRequired},
	{"two version headers", func(r *http.Request) { r.Header.Add("Sec-WebSocket-Version", "8") }, false, http.StatusUpgradeRequired},
	{"key missing", func(r *http.Request) { r.Header.Del("Sec-WebSocket-Key") }, false, http.StatusBadRequest},
	{"key duplicated", func(r *http.Request) { r.Header.Add("Sec-WebSocket-Key", validKey) }, false, http.StatusBadRequest},
	{"key not base64", set("Sec-WebSocket-Key", "!!!!!!!!!!!!!!!!!!!!!!=="), false, http.StatusBadRequest},
	{"key 15 bytes", set("Sec-WebSocket-Key", "AAAAAAAAAAAAAAAAAAAA"), false, http.StatusBadRequest},
	{"key 17 bytes", set("Sec-WebSocket-Key", "AAAAAAAAAAAAAAAAAAAAAAA="), false, http.StatusBadRequest},
	{"key empty", set("Sec-WebSocket-Key", ""), false, http.StatusBadRequest},
	{"body", func(r *http.Request) { r.ContentLength = 5; r.Body = http.NoBody }, false, http.StatusBadRequest},
	{"chunked body", func(r *http.Request) { r.ContentLength = -1; r.TransferEncoding = []string{"chunked"} }, false, http.StatusBadRequest},
}

func TestIsWebSocketRequest(t *testing.T) {
	m := chiws.New(chiws.Options{})
	for _, tt := range handshakeTests {
		t.Run(tt.name, func(t *testing.T) {
			ran, gotWS := false, false
			h := m.Handler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				ran, gotWS = true, chiws.IsWebSocketRequest(r)
				w.WriteHeader(http.StatusTeapot)
			}))
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, upgradeRequest(tt.edit))
			if tt.wantStatus == 0 {
				if !ran || gotWS != tt.wantWS {
					t.Fatalf("handler ran %v, IsWebSocketRequest %v; want true, %v", ran, gotWS, tt.wantWS)
				}
				return
			}
			if ran {
				t.Fatal("handler ran for a malformed handshake")
			}
			if rec.Code != tt.wantStatus {
				t.Fatalf("status %d, want %d", rec.Code, tt.wantStatus)
			}
			if body := strings.TrimSpace(rec.Body.String()); body != http.StatusText(tt.wantStatus) {
				t.Fatalf("body %q, want the status text only", body)
			}
			switch tt.wantStatus {
			case http.StatusUpgradeRequired:
				if v := rec.Header().Get("Sec-WebSocket-Version"); v != "13" {
					t.Fatalf("426 without Sec-WebSocket-Version: 13 (got %q)", v)
				}
			case http.StatusMethodNotAllowed:
				if v := rec.Header().Get("Allow"); v != http.MethodGet {
					t.Fatalf("405 with Allow %q", v)
				}
			}
		})
	}
}

func TestIsWebSocketRequestWithoutMiddleware(t *testing.T) {
	r := upgradeRequest(nil)
	if chiws.IsWebSocketRequest(r) {
		t.Fatal("true without the middleware")
	}
	if p := chiws.RequestedProtocols(r); p != nil {
		t.Fatalf("RequestedProtocols = %q without the middleware", p)
	}
}

func TestRequestedProtocols(t *testing.T) {
	m := chiws.New(chiws.Options{})
	var got []string
	h := m.Handler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got = chiws.RequestedProtocols(r)
	}))
	h.ServeHTTP(httptest.NewRecorder(), upgradeRequest(func(r *http.Request) {
		r.Header["Sec-Websocket-Protocol"] = []string{"chat.v2, chat.v1", " ,json "}
	}))
	if want := []string{"chat.v2", "chat.v1", "json"}; !slices.Equal(got, want) {
		t.Fatalf("RequestedProtocols = %q, want %q", got, want)
	}
}

// FuzzIsWebSocketRequest: no panic, and the middleware's decision matches
// the rules: a request reaches the handler marked as a WebSocket request
// only if every rule holds, and a request that does not ask for
// "websocket" in Upgrade always reaches the handler unmarked.
func FuzzIsWebSocketRequest(f *testing.F) {
	f.Add("GET", "Upgrade", "websocket", "13", validKey, int64(0))
	f.Add("GET", "keep-alive, Upgrade", "WebSocket", "13", validKey, int64(0))
	f.Add("GET", "Upgrade", "websocket", "8, 13", validKey, int64(0))
	f.Add("POST", "Upgrade", "websocket", "13", validKey, int64(0))
	f.Add("GET", "keep-alive", "websocket", "13", validKey, int64(0))
	f.Add("GET", "Upgrade", "websocket", "8", "short", int64(3))
	f.Add("GET", "Upgrade", "h2c", "13", validKey, int64(0))
	m := chiws.New(chiws.Options{})
	f.Fuzz(func(t *testing.T, method, connection, upgrade, version, key string, length int64) {
		if !validMethod(method) {
			return
		}
		r := httptest.NewRequest(http.MethodGet, "http://s/ws", nil)
		r.Method = method
		r.ContentLength = length
		r.Header.Set("Connection", connection)
		r.Header.Set("Upgrade", upgrade)
		r.Header.Set("Sec-WebSocket-Version", version)
		r.Header.Set("Sec-WebSocket-Key", key)
		ran, ws := false, false
		rec := httptest.NewRecorder()
		m.Handler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			ran, ws = true, chiws.IsWebSocketRequest(r)
		})).ServeHTTP(rec, r)

		asks := tokenIn(upgrade, "websocket")
		valid := asks && method == http.MethodGet && tokenIn(connection, "upgrade") &&
			strings.Trim(version, " \t") == "13" && length == 0 && len(strings.TrimSpace(key)) == 24
		switch {
		case !asks && (!ran || ws):
			t.Fatalf("non-upgrade request: ran %v, marked %v", ran, ws)
		case ws && !valid:
			t.Fatalf("marked as WebSocket but breaks a rule")
		case asks && !ran && rec.Code < 400:
			t.Fatalf("refused with status %d", rec.Code)
		}
	})
}

func validMethod(m string) bool {
	if m == "" {
		return false
	}
	for i := 0; i < len(m); i++ {
		if c := m[i]; c <= ' ' || c >= 0x7f || strings.IndexByte("()<>@,;:\\\"/[]?={}", c) >= 0 {
			return false
		}
	}
	return true
}

// tokenIn is an independent implementation of the token-list rule.
func tokenIn(list, token string) bool {
	for _, t := range strings.Split(list, ",") {
		if strings.EqualFold(strings.TrimSpace(t), token) {
			return true
		}
	}
	return false
}

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
		{"HTTP/1.1 CONNECT", req("CONNECT", "HTTP/1.1", valid), 405, map[string]string{"Allow": "GET"}, invalid, zapcore.DebugLevel, "method must be GET"},
		{"HEAD", req("HEAD", "HTTP/1.1", valid), 405, map[string]string{"Allow": "GET"}, invalid, zapcore.DebugLevel, "method must be GET"},
		{"HTTP/1.0", req("GET", "HTTP/1.0", valid), 400, nil, invalid, zapcore.DebugLevel, "HTTP/1.1 or later required"},
		{"Connection keep-alive only", req("GET", "HTTP/1.1", "Upgrade: websocket\r\nConnection: keep-alive\r\n"+v13+key), 400, nil, invalid, zapcore.DebugLevel, "Connection header lacks the upgrade token (is a proxy dropping it?)"},
		{"body with Content-Length", func(host string) string { return req("GET", "HTTP/1.1", valid+"Content-Length: 5\r\n")(host) + "hello" }, 400, nil, invalid, zapcore.DebugLevel, "handshake must not have a body"},
		{"chunked body", func(host string) string {
			return req("GET", "HTTP/1.1", valid+"Transfer-Encoding: chunked\r\n")(host) + "5\r\nhello\r\n0\r\n\r\n"
		}, 400, nil, invalid, zapcore.DebugLevel, "handshake must not have a body"},
		{"2 MiB header", req("GET", "HTTP/1.1", valid+"X-Junk: "+huge+"\r\n"), 431, nil, "", 0, ""},
		{"Origin null", withOrigin(func(string) string { return "null" }), 403, nil, origin, zapcore.DebugLevel, "null origin"},
		{"Origin file://", withOrigin(func(string) string { return "file://" }), 403, nil, origin, zapcore.DebugLevel, "malformed Origin"},
		{"Origin non-ASCII", withOrigin(func(h string) string { return "http://exämple.com" }), 403, nil, origin, zapcore.DebugLevel, "malformed Origin"},
		{"Origin non-ASCII same host", withOrigin(func(h string) string { return "http://" + h + "\u00e9" }), 403, nil, origin, zapcore.DebugLevel, "malformed Origin"},
		{"Origin with path", withOrigin(func(h string) string { return "http://" + h + "/app" }), 403, nil, origin, zapcore.DebugLevel, "malformed Origin"},
		{"Origin with trailing slash", withOrigin(func(h string) string { return "http://" + h + "/" }), 403, nil, origin, zapcore.DebugLevel, "malformed Origin"},
		{"Origin with user info", withOrigin(func(h string) string { return "http://x@" + h }), 403, nil, origin, zapcore.DebugLevel, "malformed Origin"},
		{"Origin cross-site", withOrigin(func(string) string { return "https://evil.example" }), 403, nil, origin, zapcore.DebugLevel, "cross-origin (same-origin only)"},
		{"several Origin headers", func(host string) string {
			return req("GET", "HTTP/1.1", valid+"Origin: http://"+host+"\r\nOrigin: http://"+host+"\r\n")(host)
		}, 403, nil, origin, zapcore.DebugLevel, "several Origin headers"},
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
