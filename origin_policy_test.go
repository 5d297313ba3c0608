package chiws_test

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/chiws/chiws"
)

// originRequest builds an upgrade request to host carrying the given Origin
// header values.
func originRequest(host string, origins ...string) *http.Request {
	r := httptest.NewRequest(http.MethodGet, "http://"+host+"/ws", nil)
	r.Host = host
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
			err := m.CheckOrigin(originRequest(tt.host, tt.give...))
			if got := err == nil; got != tt.want {
				t.Fatalf("allowed = %v, want %v (err %v)", got, tt.want, err)
			}
			if err != nil && !errors.Is(err, chiws.ErrOriginNotAllowed) {
				t.Fatalf("error %v does not wrap ErrOriginNotAllowed", err)
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
		if got := m.CheckOrigin(originRequest("s", tt.give)) == nil; got != tt.want {
			t.Errorf("%q: allowed = %v, want %v", tt.give, got, tt.want)
		}
	}
	if m.CheckOrigin(originRequest("s")) != nil {
		t.Error("request without Origin refused")
	}
	if len(calls) != len(tests) {
		t.Errorf("func called %d times, want %d (never without an Origin header)", len(calls), len(tests))
	}
	if calls[2] != "https://Weird Value" {
		t.Errorf("func got %q, want the raw header value", calls[2])
	}
}

func TestInvalidOptions(t *testing.T) {
	tests := []struct {
		name string
		give chiws.Options
		want string // in the panic message
	}{
		{"trailing slash", chiws.Options{AllowedOrigins: []string{"https://a.com/"}}, "AllowedOrigins[0]"},
		{"no scheme", chiws.Options{AllowedOrigins: []string{"https://ok.com", "a.com"}}, "AllowedOrigins[1]"},
		{"empty", chiws.Options{AllowedOrigins: []string{""}}, "AllowedOrigins[0] is empty"},
		{"mid wildcard", chiws.Options{AllowedOrigins: []string{"https://a*.com"}}, "wildcard"},
		{"inner wildcard", chiws.Options{AllowedOrigins: []string{"https://a.*.com"}}, "wildcard"},
		{"bad port", chiws.Options{AllowedOrigins: []string{"https://a.com:99999"}}, "port"},
		{"path", chiws.Options{AllowedOrigins: []string{"https://a.com/x"}}, "path"},
		{"read limit", chiws.Options{ReadLimit: -1}, "ReadLimit"},
		{"max connections", chiws.Options{MaxConnections: -5}, "MaxConnections"},
		{"compression threshold", chiws.Options{CompressionThreshold: -1}, "CompressionThreshold"},
		{"compression mode", chiws.Options{CompressionMode: 42}, "CompressionMode"},
		{"subprotocol", chiws.Options{Subprotocols: []string{"chat v1"}}, "Subprotocols[0]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.give.Validate()
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Validate() = %v, want an error naming %q", err, tt.want)
			}
			defer func() {
				p := recover()
				msg, _ := p.(string)
				if !strings.HasPrefix(msg, "chiws: Options.") || !strings.Contains(msg, tt.want) {
					t.Fatalf("New panicked with %v, want a message naming %q", p, tt.want)
				}
			}()
			chiws.New(tt.give)
		})
	}
}

func TestOptionsNotRetained(t *testing.T) {
	origins := []string{"https://client.com"}
	m := chiws.New(chiws.Options{AllowedOrigins: origins})
	origins[0] = "https://evil.com"
	if m.CheckOrigin(originRequest("s", "https://evil.com")) == nil {
		t.Fatal("New kept the caller's slice")
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
		if err := star.CheckOrigin(r); err != nil {
			t.Fatalf("* refused %q: %v", origin, err)
		}
		if wild.CheckOrigin(r) == nil {
			rest, ok := strings.CutPrefix(strings.ToLower(origin), "https://")
			rest = strings.TrimSuffix(rest, ":443") // the default port
			if !ok || !strings.HasSuffix(rest, ".example.com") || strings.ContainsAny(rest, "/?#@:\\ ") ||
				strings.HasPrefix(rest, ".") || strings.Contains(rest, "..") {
				t.Fatalf("https://*.example.com allowed %q", origin)
			}
		}
		r.Host = host
		if same.CheckOrigin(r) == nil && origin != "" {
			u, err := url.Parse(origin)
			h, herr := url.Parse("http://" + host)
			if err != nil || herr != nil || (u.Scheme != "http" && u.Scheme != "https") ||
				!strings.EqualFold(u.Hostname(), h.Hostname()) {
				t.Fatalf("same-origin policy allowed %q for host %q", origin, host)
			}
		}
	})
}
