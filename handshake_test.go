package chiws_test

import (
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"

	"github.com/chiws/chiws"
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
