package chiws

import (
	"fmt"
	"net/http"
	"strings"
)

// This file holds the origin policy: pure string matching, no I/O.
//
// Grammar of an AllowedOrigins entry:
//
//	"*"                       any origin, "null" included
//	"null"                    the opaque origin (sandboxed iframes, file: pages)
//	scheme "://" host [":" port]
//
// where host may begin with the label "*." (one or more whole DNS labels:
// "https://*.example.com" matches "https://a.example.com" and
// "https://a.b.example.com", never "https://example.com") and port may be "*"
// (any port, or none). Matching is case-insensitive and a default port
// (80 for http and ws, 443 for https and wss) equals no port.

// origin is a parsed, lower-cased Origin or AllowedOrigins entry.
type origin struct {
	scheme string
	host   string // without brackets for IPv6 literals
	port   string // "" for the scheme's default port, "*" in a pattern
	// wildcardHost is set for "*.example.com": host then holds the suffix
	// ".example.com".
	wildcardHost bool
}

// originPattern is one normalised AllowedOrigins entry.
type originPattern struct {
	raw string
	origin
}

// originPolicy decides whether an Origin header value is allowed.
// The zero value allows same-origin requests only.
type originPolicy struct {
	allowAll  bool
	allowNull bool
	patterns  []originPattern
	fn        func(r *http.Request, origin string) bool
}

// maxOriginLen bounds the Origin values we parse. Real origins are short (a
// DNS name is at most 253 bytes); anything longer is rejected as malformed.
const maxOriginLen = 512

// newOriginPolicy validates and normalises the configured origins. The
// returned error names the offending entry.
func newOriginPolicy(allowed []string, fn func(*http.Request, string) bool) (originPolicy, error) {
	p := originPolicy{fn: fn}
	for i, raw := range allowed {
		entry := strings.ToLower(strings.TrimSpace(raw))
		switch entry {
		case "*":
			p.allowAll = true
			continue
		case "null":
			p.allowNull = true
			continue
		case "":
			return p, fmt.Errorf("AllowedOrigins[%d] is empty", i)
		}
		o, err := parseOrigin(entry, true)
		if err != nil {
			return p, fmt.Errorf("AllowedOrigins[%d] %q: %v", i, raw, err)
		}
		p.patterns = append(p.patterns, originPattern{raw: raw, origin: o})
	}
	return p, nil
}

// originDecision is the outcome of an origin check, with a reason for logs.
type originDecision struct {
	allowed bool
	reason  string
}

// check applies the policy to r. Requests without an Origin header are
// allowed: browsers always send one on WebSocket handshakes, so its absence
// means a non-browser client, which could forge any value anyway.
func (p *originPolicy) check(r *http.Request) originDecision {
	values := r.Header["Origin"]
	switch len(values) {
	case 0:
		return originDecision{allowed: true, reason: "no Origin header"}
	case 1:
	default:
		return originDecision{reason: "several Origin headers"}
	}
	raw := values[0]
	if p.fn != nil {
		if p.fn(r, raw) {
			return originDecision{allowed: true, reason: "AllowOriginFunc"}
		}
		return originDecision{reason: "AllowOriginFunc refused"}
	}
	if p.allowAll {
		return originDecision{allowed: true, reason: "all origins allowed"}
	}
	if strings.EqualFold(raw, "null") {
		if p.allowNull {
			return originDecision{allowed: true, reason: "null origin allowed"}
		}
		return originDecision{reason: "null origin"}
	}
	o, err := parseOrigin(raw, false)
	if err != nil {
		return originDecision{reason: "malformed Origin"}
	}
	if len(p.patterns) == 0 {
		if sameOrigin(o, r) {
			return originDecision{allowed: true, reason: "same origin"}
		}
		return originDecision{reason: "cross-origin (same-origin only)"}
	}
	for i := range p.patterns {
		if p.patterns[i].match(o) {
			return originDecision{allowed: true, reason: "matches AllowedOrigins"}
		}
	}
	return originDecision{reason: "not in AllowedOrigins"}
}

// match reports whether the parsed request origin o matches the pattern.
func (pt *originPattern) match(o origin) bool {
	if pt.scheme != o.scheme {
		return false
	}
	if pt.port != "*" && pt.port != o.port {
		return false
	}
	if !pt.wildcardHost {
		return pt.host == o.host
	}
	// "*.example.com": o.host must be "<labels>.example.com" with at least
	// one label before the suffix. parseOrigin has already rejected empty
	// labels and characters outside [a-z0-9.-], so the prefix is made of
	// whole, well-formed labels.
	return len(o.host) > len(pt.host) && strings.HasSuffix(o.host, pt.host)
}

// sameOrigin reports whether o names the host the request was sent to. The
// scheme is not compared: behind a TLS-terminating proxy the server cannot
// know it. Only http and https origins can be the same origin as an HTTP
// server.
func sameOrigin(o origin, r *http.Request) bool {
	if o.scheme != "http" && o.scheme != "https" {
		return false // a web page's origin; the server speaks HTTP
	}
	host, port := splitHostPort(r.Host)
	if !strings.EqualFold(host, o.host) {
		return false
	}
	if port == "" {
		// The Host header omits the port when it is the scheme's default,
		// which is what o.port == "" means for the Origin.
		return o.port == ""
	}
	return port == o.port || (o.port == "" && port == defaultPort(o.scheme))
}

// splitHostPort splits a Host header value; it tolerates a missing port and
// strips IPv6 brackets.
func splitHostPort(hostport string) (host, port string) {
	if strings.HasPrefix(hostport, "[") {
		end := strings.IndexByte(hostport, ']')
		if end < 0 {
			return hostport, ""
		}
		host = hostport[1:end]
		if rest := hostport[end+1:]; strings.HasPrefix(rest, ":") {
			port = rest[1:]
		}
		return host, port
	}
	if i := strings.LastIndexByte(hostport, ':'); i >= 0 {
		return hostport[:i], hostport[i+1:]
	}
	return hostport, ""
}

func defaultPort(scheme string) string {
	switch scheme {
	case "http", "ws":
		return "80"
	case "https", "wss":
		return "443"
	}
	return ""
}

// parseOrigin parses "scheme://host[:port]" strictly: no path, query,
// fragment, user info, white space or non-ASCII byte, because a browser never
// sends them and a lenient parser is how wildcard checks get tricked
// ("https://a.example.com@evil.com"). With pattern set, the host may start
// with "*." and the port may be "*".
func parseOrigin(s string, pattern bool) (origin, error) {
	var o origin
	if len(s) > maxOriginLen {
		return o, fmt.Errorf("longer than %d bytes", maxOriginLen)
	}
	i := strings.Index(s, "://")
	if i <= 0 {
		return o, fmt.Errorf(`want scheme://host[:port], for example "https://example.com"`)
	}
	scheme, rest := s[:i], s[i+3:]
	if !validScheme(scheme) {
		return o, fmt.Errorf("invalid scheme %q", scheme)
	}
	o.scheme = strings.ToLower(scheme)
	for j := 0; j < len(rest); j++ {
		switch c := rest[j]; {
		case c == '/' || c == '?' || c == '#':
			return o, fmt.Errorf("an origin has no path, query or fragment (did you add a trailing slash?)")
		case c == '@':
			return o, fmt.Errorf("an origin has no user info")
		case c <= ' ' || c >= 0x7f:
			return o, fmt.Errorf("white space, control or non-ASCII byte (use the punycode form of the host)")
		}
	}
	host, port := rest, ""
	if strings.HasPrefix(rest, "[") {
		end := strings.IndexByte(rest, ']')
		if end < 0 {
			return o, fmt.Errorf("unterminated IPv6 literal")
		}
		host = rest[1:end]
		switch after := rest[end+1:]; {
		case after == "":
		case after[0] == ':':
			port = after[1:]
			if port == "" {
				return o, fmt.Errorf("empty port")
			}
		default:
			return o, fmt.Errorf("junk after IPv6 literal")
		}
		if !validIPv6(host) {
			return o, fmt.Errorf("invalid IPv6 literal %q", host)
		}
	} else {
		if k := strings.LastIndexByte(rest, ':'); k >= 0 {
			host, port = rest[:k], rest[k+1:]
			if port == "" {
				return o, fmt.Errorf("empty port")
			}
		}
		if pattern && strings.HasPrefix(host, "*.") {
			o.wildcardHost = true
			host = host[1:] // keep the leading dot: ".example.com"
			if !validHostname(host[1:]) {
				return o, fmt.Errorf("invalid host %q", "*"+host)
			}
		} else if !validHostname(host) {
			if strings.Contains(host, "*") {
				return o, fmt.Errorf(`a wildcard must be a whole leading label ("https://*.example.com") or the whole port ("http://localhost:*")`)
			}
			return o, fmt.Errorf("invalid host %q", host)
		}
	}
	o.host = strings.ToLower(host)
	switch {
	case port == "":
	case pattern && port == "*":
		o.port = "*"
		return o, nil
	default:
		if !validPort(port) {
			return o, fmt.Errorf("invalid port %q", port)
		}
		port = strings.TrimLeft(port, "0")
		if port == defaultPort(o.scheme) {
			port = ""
		}
	}
	o.port = port
	return o, nil
}

func validScheme(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z':
		case i > 0 && (c >= '0' && c <= '9' || c == '+' || c == '-' || c == '.'):
		default:
			return false
		}
	}
	return true
}

// validHostname accepts dot-separated labels of letters, digits and hyphens
// (IPv4 literals included), with no empty label.
func validHostname(h string) bool {
	if h == "" || len(h) > 253 {
		return false
	}
	label := 0
	for i := 0; i < len(h); i++ {
		c := h[i]
		switch {
		case c == '.':
			if label == 0 {
				return false
			}
			label = 0
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '-', c == '_':
			label++
			if label > 63 {
				return false
			}
		default:
			return false
		}
	}
	return label > 0
}

func validIPv6(h string) bool {
	if len(h) < 2 || len(h) > 45 || !strings.Contains(h, ":") {
		return false
	}
	for i := 0; i < len(h); i++ {
		c := h[i] | 0x20
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c == ':' || c == '.') {
			return false
		}
	}
	return true
}

func validPort(p string) bool {
	if len(p) == 0 || len(p) > 5 {
		return false
	}
	n := 0
	for i := 0; i < len(p); i++ {
		if p[i] < '0' || p[i] > '9' {
			return false
		}
		n = n*10 + int(p[i]-'0')
	}
	return n > 0 && n <= 65535
}
