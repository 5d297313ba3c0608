package chiws

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

// origin is a parsed, lower-cased Origin value or AllowedOrigins entry.
type origin struct {
	scheme string
	host   string // without IPv6 brackets; ".example.com" for "*.example.com"
	port   string // "" for the scheme's default port; "*" in a pattern
	anySub bool   // the pattern's host began with "*."
}

// originPolicy matches Origin values against Options.AllowedOrigins: pure
// string matching, no I/O. A "*." host label stands for one or more whole
// DNS labels, a "*" port for any port or none, and a default port (80 for
// http and ws, 443 for https and wss) equals none. The zero value allows
// same-origin requests only.
type originPolicy struct {
	allowAll, allowNull bool
	patterns            []origin
	fn                  func(r *http.Request, origin string) bool
}

const maxOriginLen = 512 // a DNS name has at most 253 bytes

// newOriginPolicy validates and normalises the configured origins.
func newOriginPolicy(allowed []string, fn func(*http.Request, string) bool) (originPolicy, error) {
	p := originPolicy{fn: fn}
	for i, raw := range allowed {
		switch entry := strings.ToLower(strings.TrimSpace(raw)); entry {
		case "*":
			p.allowAll = true
		case "null":
			p.allowNull = true
		case "":
			return p, fmt.Errorf("AllowedOrigins[%d] is empty", i)
		default:
			o, err := parseOrigin(entry, true)
			if err != nil {
				return p, fmt.Errorf("AllowedOrigins[%d] %q: %v", i, raw, err)
			}
			p.patterns = append(p.patterns, o)
		}
	}
	return p, nil
}

// refusal returns why r is refused, or "" when it is allowed. Browsers
// always send Origin on WebSocket handshakes: without it, the client is no
// browser, and could forge any value anyway.
func (p *originPolicy) refusal(r *http.Request) string {
	values := r.Header["Origin"]
	switch {
	case len(values) == 0:
		return ""
	case len(values) > 1:
		return "several Origin headers"
	case p.fn != nil:
		return refusedUnless(p.fn(r, values[0]), "AllowOriginFunc refused")
	case p.allowAll:
		return ""
	case strings.EqualFold(values[0], "null"):
		return refusedUnless(p.allowNull, "null origin")
	}
	o, err := parseOrigin(values[0], false)
	switch {
	case err != nil:
		return "malformed Origin"
	case len(p.patterns) == 0:
		return refusedUnless(sameOrigin(o, r.Host), "cross-origin (same-origin only)")
	}
	return refusedUnless(slices.ContainsFunc(p.patterns, func(pt origin) bool { return pt.match(o) }), "not in AllowedOrigins")
}

func refusedUnless(allowed bool, reason string) string {
	if allowed {
		return ""
	}
	return reason
}

// match reports whether o matches the pattern pt. For "*.example.com", o's
// host must be longer than ".example.com"; parseOrigin accepts only
// well-formed labels, so the prefix is whole labels.
func (pt origin) match(o origin) bool {
	return pt.scheme == o.scheme && (pt.port == "*" || pt.port == o.port) &&
		(pt.host == o.host || pt.anySub && len(o.host) > len(pt.host) && strings.HasSuffix(o.host, pt.host))
}

// sameOrigin reports whether o names the host the request was sent to. The
// scheme is not compared, because behind a TLS-terminating proxy the server
// cannot know it; but only http and https origins can be an HTTP server's.
func sameOrigin(o origin, host string) bool {
	// RFC 3986 allows an empty port in a Host header (not in an Origin).
	h, err := parseHost(o.scheme, strings.TrimSuffix(host, ":"), false)
	return (o.scheme == "http" || o.scheme == "https") && err == nil && h.host == o.host && h.port == o.port
}

// parseOrigin parses "scheme://host[:port]" strictly (no path, query,
// fragment, user info, white space or non-ASCII byte): browsers never send
// them, and lenient parsers let "https://a.example.com@evil.com" pass
// wildcards. A pattern's host may start with "*." and its port be "*".
func parseOrigin(s string, pattern bool) (origin, error) {
	if len(s) > maxOriginLen {
		return origin{}, fmt.Errorf("longer than %d bytes", maxOriginLen)
	}
	scheme, rest, ok := strings.Cut(s, "://")
	switch {
	case !ok || scheme == "":
		return origin{}, errors.New(`want scheme://host[:port], for example "https://example.com"`)
	case !validScheme(scheme):
		return origin{}, fmt.Errorf("invalid scheme %q", scheme)
	case strings.ContainsAny(rest, "/?#"):
		return origin{}, errors.New("an origin has no path, query or fragment (did you add a trailing slash?)")
	case strings.Contains(rest, "@"):
		return origin{}, errors.New("an origin has no user info")
	case strings.IndexFunc(rest, func(c rune) bool { return c <= ' ' || c >= 0x7f }) >= 0:
		return origin{}, errors.New("white space, control or non-ASCII byte (use the punycode form of the host)")
	}
	return parseHost(strings.ToLower(scheme), rest, pattern)
}

func parseHost(scheme, hostport string, pattern bool) (origin, error) {
	o := origin{scheme: scheme}
	host, port, bracketed := hostport, "", strings.HasPrefix(hostport, "[")
	switch {
	case strings.HasSuffix(hostport, ":"):
		return o, errors.New("empty port")
	case bracketed && strings.HasSuffix(hostport, "]"):
		host = hostport[1 : len(hostport)-1]
	case bracketed || strings.Contains(hostport, ":"):
		var err error
		if host, port, err = net.SplitHostPort(hostport); err != nil {
			return o, err
		}
	}
	name := host
	if pattern && strings.HasPrefix(host, "*.") && !bracketed {
		o.anySub, host, name = true, host[1:], host[2:] // keep the dot: ".example.com"
	}
	switch {
	case bracketed:
		a, err := netip.ParseAddr(host)
		if err != nil || !a.Is6() || a.Zone() != "" {
			return o, fmt.Errorf("invalid IPv6 literal %q", host)
		}
		host = a.String() // one spelling per address: "::1", not "0:0::1"
	case strings.Contains(name, "*"):
		return o, errors.New(`a wildcard must be a whole leading label ("https://*.example.com") or the whole port ("http://localhost:*")`)
	case !validHostname(name):
		return o, fmt.Errorf("invalid host %q", host)
	}
	o.host = strings.ToLower(host)
	switch {
	case pattern && port == "*":
	case port != "":
		if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 || len(port) > 5 {
			return o, fmt.Errorf("invalid port %q", port)
		}
		if port = strings.TrimLeft(port, "0"); port == defaultPorts[scheme] {
			port = ""
		}
	}
	o.port = port
	return o, nil
}

var defaultPorts = map[string]string{"http": "80", "ws": "80", "https": "443", "wss": "443"}

// validScheme accepts a letter followed by letters, digits, "+", "-" and
// "." (RFC 3986 section 3.1).
func validScheme(s string) bool {
	for i := 0; i < len(s); i++ {
		c, l := s[i], s[i]|0x20 // l is c lower-cased, if c is a letter
		if !(l >= 'a' && l <= 'z' || i > 0 && (c >= '0' && c <= '9' || c == '+' || c == '-' || c == '.')) {
			return false
		}
	}
	return s != ""
}

// validHostname accepts dot-separated labels of letters, digits, hyphens
// and underscores (IPv4 literals included), with no empty label.
func validHostname(h string) bool {
	if len(h) > 253 {
		return false
	}
	for label := range strings.SplitSeq(h, ".") {
		if label == "" || len(label) > 63 || strings.ContainsFunc(label, func(c rune) bool {
			return !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_')
		}) {
			return false
		}
	}
	return true
}
