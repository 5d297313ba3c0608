package chiws_test

import (
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/chiws/chiws"
	"github.com/coder/websocket"
	"github.com/go-chi/chi/v5"
)

// originRequest builds an upgrade request to host carrying the given Origin
// header values.
func originRequest(host string, origins ...string) *http.Request {
	r := httptest.NewRequest(http.MethodGet, "/ws", nil)
	r.Host = host // as sent, well-formed or not
	for _, o := range origins {
		r.Header.Add("Origin", o)
	}
	return r
}

var originTests = []struct {
	name    string
	allowed []string
	host    string
	give    []string // Origin header values; none means no header
	want    bool
}{
	// Same-origin default.
	{"no origin header", nil, "server.com", nil, true},
	{"same origin", nil, "server.com", []string{"https://server.com"}, true},
	{"same origin http", nil, "server.com", []string{"http://server.com"}, true},
	{"same origin other scheme", nil, "server.com", []string{"ftp://server.com"}, false},
	{"same origin case", nil, "Server.COM", []string{"HTTPS://SERVER.com"}, true},
	{"same origin port", nil, "localhost:5000", []string{"http://localhost:5000"}, true},
	{"same origin other port", nil, "localhost:5000", []string{"http://localhost:5001"}, false},
	{"same origin default port in host", nil, "server.com:443", []string{"https://server.com"}, true},
	{"same origin explicit default port", nil, "server.com", []string{"https://server.com:443"}, true},
	{"same origin port missing in origin", nil, "server.com:8080", []string{"http://server.com"}, false},
	{"cross origin", nil, "server.com", []string{"https://client.com"}, false},
	{"subdomain is cross origin", nil, "server.com", []string{"https://a.server.com"}, false},
	{"suffix trick", nil, "server.com", []string{"https://server.com.evil.com"}, false},
	{"ipv6 same origin", nil, "[::1]:5000", []string{"http://[::1]:5000"}, true},
	{"ipv6 other spelling", nil, "[0:0::1]:5000", []string{"http://[::1]:5000"}, true},
	{"ipv6 zone", nil, "[fe80::1%25eth0]", []string{"http://[fe80::1%25eth0]"}, false},
	{"ipv6 not an address", nil, "s", []string{"http://[::g]"}, false},
	{"host with empty port", nil, "server.com:", []string{"https://server.com"}, true},
	{"host port with leading zero", nil, "localhost:05000", []string{"http://localhost:5000"}, true},
	{"malformed host", nil, "[server.com]", []string{"https://server.com"}, false},
	{"null rejected by default", nil, "server.com", []string{"null"}, false},
	{"malformed", nil, "server.com", []string{"server.com"}, false},
	{"empty value", nil, "server.com", []string{""}, false},
	{"path", nil, "server.com", []string{"https://server.com/app"}, false},
	{"trailing slash", nil, "server.com", []string{"https://server.com/"}, false},
	{"user info", nil, "server.com", []string{"https://x@server.com"}, false},
	{"non-ascii", nil, "server.com", []string{"https://sérver.com"}, false},
	{"file scheme", nil, "server.com", []string{"file://"}, false},
	{"several origin headers", nil, "server.com", []string{"https://server.com", "https://server.com"}, false},

	// Explicit list.
	{"listed", []string{"https://client.com"}, "server.com", []string{"https://client.com"}, true},
	{"listed case-insensitive", []string{"HTTPS://Client.com"}, "server.com", []string{"https://CLIENT.com"}, true},
	{"listed wrong scheme", []string{"https://client.com"}, "server.com", []string{"http://client.com"}, false},
	{"listed wrong port", []string{"https://client.com"}, "server.com", []string{"https://client.com:8443"}, false},
	{"listed default port", []string{"https://client.com:443"}, "server.com", []string{"https://client.com"}, true},
	{"list replaces same-origin", []string{"https://client.com"}, "server.com", []string{"https://server.com"}, false},
	{"listed localhost", []string{"http://localhost:5000"}, "server.com", []string{"http://localhost:5000"}, true},
	{"listed ipv6, other spelling", []string{"http://[0:0:0:0:0:0:0:1]:*"}, "server.com", []string{"http://[::1]:8080"}, true},
	{"not listed", []string{"https://client.com"}, "server.com", []string{"https://evil.com"}, false},
	{"no origin with list", []string{"https://client.com"}, "server.com", nil, true},

	// Wildcards.
	{"wildcard label", []string{"https://*.example.com"}, "s", []string{"https://a.example.com"}, true},
	{"wildcard deep", []string{"https://*.example.com"}, "s", []string{"https://a.b.example.com"}, true},
	{"wildcard apex", []string{"https://*.example.com"}, "s", []string{"https://example.com"}, false},
	{"wildcard suffix trick", []string{"https://*.example.com"}, "s", []string{"https://example.com.evil.com"}, false},
	{"wildcard query trick", []string{"https://*.example.com"}, "s", []string{"https://evil.com/?.example.com"}, false},
	{"wildcard userinfo trick", []string{"https://*.example.com"}, "s", []string{"https://a.example.com@evil.com"}, false},
	{"wildcard no dot", []string{"https://*.example.com"}, "s", []string{"https://evilexample.com"}, false},
	{"wildcard empty label", []string{"https://*.example.com"}, "s", []string{"https://.example.com"}, false},
	{"wildcard scheme", []string{"https://*.example.com"}, "s", []string{"http://a.example.com"}, false},
	{"wildcard port", []string{"https://*.example.com"}, "s", []string{"https://a.example.com:8443"}, false},
	{"port wildcard", []string{"http://localhost:*"}, "s", []string{"http://localhost:3000"}, true},
	{"port wildcard no port", []string{"http://localhost:*"}, "s", []string{"http://localhost"}, true},
	{"port wildcard other host", []string{"http://localhost:*"}, "s", []string{"http://localhost.evil.com:3000"}, false},
	{"both wildcards", []string{"https://*.example.com:*"}, "s", []string{"https://a.example.com:8443"}, true},

	// Special entries.
	{"star allows all", []string{"*"}, "s", []string{"https://anything.com"}, true},
	{"star allows null", []string{"*"}, "s", []string{"null"}, true},
	{"star allows malformed", []string{"*"}, "s", []string{"whatever"}, true},
	{"null entry", []string{"null"}, "s", []string{"null"}, true},
	{"null entry only null", []string{"null"}, "s", []string{"https://a.com"}, false},
}

func TestOriginPolicy(t *testing.T) {
	for _, tt := range originTests {
		t.Run(tt.name, func(t *testing.T) {
			m := chiws.New(chiws.Options{AllowedOrigins: tt.allowed})
			err := chiws.CheckOrigin(m, originRequest(tt.host, tt.give...))
			if got := err == nil; got != tt.want {
				t.Fatalf("allowed = %v, want %v (err %v)", got, tt.want, err)
			}
		})
	}
}

func TestAllowOriginFunc(t *testing.T) {
	var calls []string
	m := chiws.New(chiws.Options{
		AllowedOrigins: []string{"https://listed.com"}, // replaced by the func
		AllowOriginFunc: func(r *http.Request, origin string) bool {
			calls = append(calls, origin)
			return strings.HasSuffix(origin, ".trusted.io")
		},
	})
	tests := []struct {
		give string
		want bool
	}{
		{"https://app.trusted.io", true},
		{"https://listed.com", false},
		{"https://Weird Value", false},
	}
	for _, tt := range tests {
		if got := chiws.CheckOrigin(m, originRequest("s", tt.give)) == nil; got != tt.want {
			t.Errorf("%q: allowed = %v, want %v", tt.give, got, tt.want)
		}
	}
	if chiws.CheckOrigin(m, originRequest("s")) != nil {
		t.Error("request without Origin refused")
	}
	if len(calls) != len(tests) {
		t.Errorf("func called %d times, want %d (never without an Origin header)", len(calls), len(tests))
	}
	if calls[2] != "https://Weird Value" {
		t.Errorf("func got %q, want the raw header value", calls[2])
	}
}

// FuzzOriginPolicy checks invariants of the policy on arbitrary Origin
// values: no panic; "*" allows everything; a wildcard pattern allows only
// origins that the exact pattern for the same host would, i.e. a
// well-formed https origin whose host ends in ".example.com" after at
// least one label, with no port.
func FuzzOriginPolicy(f *testing.F) {
	for _, tt := range originTests {
		for _, o := range tt.give {
			f.Add(o, tt.host)
		}
	}
	star := chiws.New(chiws.Options{AllowedOrigins: []string{"*"}})
	wild := chiws.New(chiws.Options{AllowedOrigins: []string{"https://*.example.com"}})
	same := chiws.New(chiws.Options{})
	f.Fuzz(func(t *testing.T, origin, host string) {
		r := originRequest("s", origin)
		if err := chiws.CheckOrigin(star, r); err != nil {
			t.Fatalf("* refused %q: %v", origin, err)
		}
		if chiws.CheckOrigin(wild, r) == nil {
			rest, ok := strings.CutPrefix(strings.ToLower(origin), "https://")
			rest = strings.TrimSuffix(rest, ":443") // the default port
			if !ok || !strings.HasSuffix(rest, ".example.com") || strings.ContainsAny(rest, "/?#@:\\ ") ||
				strings.HasPrefix(rest, ".") || strings.Contains(rest, "..") {
				t.Fatalf("https://*.example.com allowed %q", origin)
			}
		}
		r.Host = host
		if chiws.CheckOrigin(same, r) == nil && origin != "" {
			u, err := url.Parse(origin)
			h, herr := url.Parse("http://" + host)
			if err != nil || herr != nil || (u.Scheme != "http" && u.Scheme != "https") ||
				!sameHostname(u.Hostname(), h.Hostname()) {
				t.Fatalf("same-origin policy allowed %q for host %q", origin, host)
			}
		}
	})
}

// sameHostname compares host names case-insensitively, and IP addresses
// by value ("::1" is "0:0::1").
func sameHostname(a, b string) bool {
	ia, erra := netip.ParseAddr(a)
	ib, errb := netip.ParseAddr(b)
	if erra == nil && errb == nil {
		return ia == ib
	}
	return strings.EqualFold(a, b)
}

// TestCrossSiteWebSocketHijacking reproduces the attack: a page on a
// foreign site opens a socket to the app, and the browser attaches the
// user's session cookie. The handler authenticates by cookie, so only the
// Origin check stands between the attacker and the user's data.
func TestCrossSiteWebSocketHijacking(t *testing.T) {
	const (
		cookie = "session=alice-secret"
		secret = "alice's private messages"
	)
	tests := []struct {
		name   string
		opts   chiws.Options
		origin string // "" sends no Origin header; "SELF" the server's own origin
		want   int
	}{
		// The attack is stopped by every policy that does not list the
		// attacker's site.
		{"default same-origin, attacker", chiws.Options{}, "https://evil.example", 403},
		{"default same-origin, attacker on our port", chiws.Options{}, "http://evil.example:PORT", 403},
		{"default same-origin, attacker with our host as subdomain", chiws.Options{}, "http://127.0.0.1.evil.example", 403},
		{"explicit list, attacker", chiws.Options{AllowedOrigins: []string{"https://app.example.com"}}, "https://evil.example", 403},
		{"explicit list, scheme downgrade", chiws.Options{AllowedOrigins: []string{"https://app.example.com"}}, "http://app.example.com", 403},
		{"wildcard, attacker", chiws.Options{AllowedOrigins: []string{"https://*.example.com"}}, "https://evil.example", 403},
		{"wildcard, suffix trick", chiws.Options{AllowedOrigins: []string{"https://*.example.com"}}, "https://app.example.com.evil.example", 403},
		{"AllowOriginFunc, attacker", chiws.Options{AllowOriginFunc: func(_ *http.Request, o string) bool { return o == "https://app.example.com" }}, "https://evil.example", 403},
		{"null origin (sandboxed attacker iframe)", chiws.Options{AllowedOrigins: []string{"https://app.example.com"}}, "null", 403},
		// What the documentation allows.
		{"default same-origin, our page", chiws.Options{}, "SELF", 101},
		{"explicit list, our page", chiws.Options{AllowedOrigins: []string{"https://app.example.com"}}, "https://app.example.com", 101},
		{"wildcard, our subdomain", chiws.Options{AllowedOrigins: []string{"https://*.example.com"}}, "https://app.example.com", 101},
		{"AllowOriginFunc, our page", chiws.Options{AllowOriginFunc: func(_ *http.Request, o string) bool { return o == "https://app.example.com" }}, "https://app.example.com", 101},
		{"no Origin header (not a browser)", chiws.Options{}, "", 101},
		{"no Origin header, explicit list", chiws.Options{AllowedOrigins: []string{"https://app.example.com"}}, "", 101},
		{`"*" allows the attack, as documented`, chiws.Options{AllowedOrigins: []string{"*"}}, "https://evil.example", 101},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var served atomic.Int64
			ws, srv, _ := relServer(t, tt.opts, nil, func(r chi.Router) {
				r.Get("/ws", func(w http.ResponseWriter, r *http.Request) {
					served.Add(1)
					if c, err := r.Cookie("session"); err != nil || c.Value != "alice-secret" {
						http.Error(w, "unauthorized", http.StatusUnauthorized)
						return
					}
					c, err := chiws.Accept(w, r, nil)
					if err != nil {
						return
					}
					ctx := c.CloseRead(c.Context())
					_ = c.Write(ctx, websocket.MessageText, []byte(secret))
					<-ctx.Done()
				})
			})
			h := http.Header{"Cookie": {cookie}}
			switch origin := tt.origin; origin {
			case "":
			case "SELF":
				h.Set("Origin", srv.URL)
			default:
				u, _ := url.Parse(srv.URL)
				h.Set("Origin", strings.Replace(origin, "PORT", u.Port(), 1))
			}
			c, resp, err := websocket.Dial(testCtx(t), wsURL(srv, "/ws"), &websocket.DialOptions{HTTPHeader: h})
			if tt.want != http.StatusSwitchingProtocols {
				if err == nil {
					c.CloseNow()
					t.Fatal("the cross-site socket was accepted")
				}
				if resp == nil || resp.StatusCode != tt.want {
					t.Fatalf("dial: %v (response %v), want %d", err, resp, tt.want)
				}
				if n := served.Load(); n != 0 {
					t.Errorf("the authenticating handler ran %d times", n)
				}
				if st := ws.Stats(); st.RejectedOrigin != 1 {
					t.Errorf("RejectedOrigin = %d", st.RejectedOrigin)
				}
				return
			}
			if err != nil {
				t.Fatalf("dial: %v", err)
			}
			defer c.CloseNow()
			if _, p, err := c.Read(testCtx(t)); err != nil || string(p) != secret {
				t.Fatalf("read: %q %v", p, err)
			}
			c.Close(websocket.StatusNormalClosure, "")
		})
	}
}

// wildcardTricks are origins that must not match "https://*.example.com".
var wildcardTricks = []string{
	"https://example.com.evil.com",
	"https://evil.com/?.example.com",
	"https://a.example.com@evil.com",
	"https://evilexample.com",
	"https://example.com",
	"http://a.example.com",
	"https://a.example.com:8443",
	"https://.example.com",
	"https://..example.com",
	"https://a..example.com",
	"https://a.example.com.",
	"https://a.example.com/",
	"https://a.example.com#.example.com",
	"https://a.example.com:",
	"https://a.example.com:443@evil.com",
	"https://evil.com\\.example.com",
	"https://evil.com%2F.example.com",
	"https://a.example.com%00.evil.com",
	"https://a.example.com\t",
	" https://a.example.com",
	"https://evil.com:443#.example.com",
	"wss://a.example.com",
	"https://a.exam\u0440le.com",
	"https://[::1].example.com",
	"https://a.example.co",
	"https://a.example.comm",
	"//a.example.com",
	"https:a.example.com",
	"https://*.example.com",
	"https://a.example.com:65536",
	"https://a.example.com:-443",
}

// wildcardAllowed are origins that must match it.
var wildcardAllowed = []string{
	"https://a.example.com",
	"https://a.b.example.com",
	"https://A.EXAMPLE.COM",
	"HTTPS://a.example.com",
	"https://a.example.com:443",
	"https://xn--e1afmkfd.example.com",
	"https://a-b.example.com",
}

// TestWildcardCannotBeTricked checks every trick both through CheckOrigin
// and through a real handshake.
func TestWildcardCannotBeTricked(t *testing.T) {
	opts := chiws.Options{AllowedOrigins: []string{"https://*.example.com"}}
	ws, srv, _ := relServer(t, opts, nil, func(r chi.Router) { r.Get("/ws", echo) })
	check := func(t *testing.T, origin string, want bool) {
		r := httptest.NewRequest(http.MethodGet, "/ws", nil)
		r.Header["Origin"] = []string{origin}
		if got := chiws.CheckOrigin(ws, r) == nil; got != want {
			t.Errorf("CheckOrigin(%q) allowed = %v, want %v", origin, got, want)
		}
		if strings.ContainsAny(origin, "\t\x00") || strings.TrimSpace(origin) != origin {
			return // not sendable as such: net/http trims white space
		}
		wantStatus := http.StatusForbidden
		if want {
			wantStatus = http.StatusSwitchingProtocols
		}
		got := dialStatus(t, wsURL(srv, "/ws"), &websocket.DialOptions{HTTPHeader: http.Header{"Origin": {origin}}})
		if got != wantStatus {
			t.Errorf("handshake with Origin %q: %d, want %d", origin, got, wantStatus)
		}
	}
	for _, o := range wildcardTricks {
		t.Run("deny "+o, func(t *testing.T) { check(t, o, false) })
	}
	for _, o := range wildcardAllowed {
		t.Run("allow "+o, func(t *testing.T) { check(t, o, true) })
	}
}

// FuzzWildcardOrigin asserts that whatever "https://*.example.com" allows
// is exactly an https origin whose host is one or more non-empty labels
// followed by ".example.com", with no port other than https's default
// (which the policy treats as no port), no user info, path, query or
// fragment.
func FuzzWildcardOrigin(f *testing.F) {
	for _, s := range wildcardTricks {
		f.Add(s)
	}
	for _, s := range wildcardAllowed {
		f.Add(s)
	}
	ws := chiws.New(chiws.Options{AllowedOrigins: []string{"https://*.example.com"}})
	f.Fuzz(func(t *testing.T, origin string) {
		r := httptest.NewRequest(http.MethodGet, "/", nil)
		r.Header["Origin"] = []string{origin}
		if chiws.CheckOrigin(ws, r) != nil {
			return
		}
		u, err := url.Parse(origin)
		if err != nil {
			t.Fatalf("allowed %q, which does not parse: %v", origin, err)
		}
		if !strings.EqualFold(u.Scheme, "https") || u.Opaque != "" || u.User != nil ||
			u.Path != "" || u.RawQuery != "" || u.Fragment != "" || u.ForceQuery {
			t.Fatalf("allowed %q: %#v", origin, u)
		}
		if strings.Count(origin, "/") != 2 || strings.ContainsAny(origin, "?#@\\% \t") {
			t.Fatalf("allowed %q with more than scheme://host", origin)
		}
		if p := u.Port(); p != "" {
			if n, err := strconv.Atoi(p); err != nil || n != 443 {
				t.Fatalf("allowed %q with port %q", origin, p)
			}
		}
		host := strings.ToLower(u.Hostname())
		label, ok := strings.CutSuffix(host, ".example.com")
		if !ok || label == "" {
			t.Fatalf("allowed %q: host %q is not a subdomain of example.com", origin, host)
		}
		for _, l := range strings.Split(label, ".") {
			if l == "" {
				t.Fatalf("allowed %q: empty label in %q", origin, host)
			}
			for _, c := range l {
				if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
					t.Fatalf("allowed %q: byte %q in host", origin, c)
				}
			}
		}
	})
}
