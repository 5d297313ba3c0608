package chiws

import (
	"encoding/base64"
	"net/http"
	"strings"
)

// This file recognises WebSocket upgrade requests (RFC 6455 section 4.2.1).
// Everything here runs on the request path and must not allocate for
// ordinary HTTP requests.

// isUpgradeAttempt reports whether r asks for a WebSocket at all: an
// HTTP/1.1 upgrade (its Upgrade header lists "websocket") or an HTTP/2
// extended CONNECT (RFC 8441). It is the only check ordinary requests pay
// for.
func isUpgradeAttempt(r *http.Request) bool {
	return hasToken(r.Header["Upgrade"], "websocket") || isExtendedConnect(r)
}

// isExtendedConnect reports whether r is an RFC 8441 extended CONNECT for
// a WebSocket. net/http's HTTP/2 server passes the :protocol pseudo-header
// in r.Header (only with GODEBUG=http2xconnect=1, see docs/http2.md).
func isExtendedConnect(r *http.Request) bool {
	if r.Method != http.MethodConnect {
		return false
	}
	p := r.Header[":protocol"]
	return len(p) == 1 && strings.EqualFold(p[0], "websocket") && r.ProtoMajor >= 2
}

// checkHandshake applies ASP.NET Core's IsWebSocketRequest rules to an
// upgrade attempt (see isUpgradeAttempt), and returns the status to answer
// and why when it breaks one, or 0. The reason never holds request data.
// HTTP/1.1: GET, Connection lists "upgrade", Sec-WebSocket-Version is 13
// (else 426, RFC 6455 section 4.4), one Sec-WebSocket-Key that decodes to
// 16 bytes, and no body. HTTP/2 (RFC 8441): CONNECT with :protocol
// websocket and version 13; the stream is the body, and there is no key.
func checkHandshake(r *http.Request) (status int, reason string) {
	keys := r.Header["Sec-Websocket-Key"]
	version13 := isVersion13(r.Header["Sec-Websocket-Version"])
	if isExtendedConnect(r) {
		if !version13 {
			return http.StatusUpgradeRequired, "Sec-WebSocket-Version must be 13"
		}
		return 0, ""
	}
	switch {
	case r.Method != http.MethodGet:
		return http.StatusMethodNotAllowed, "method must be GET"
	case !r.ProtoAtLeast(1, 1):
		return http.StatusBadRequest, "HTTP/1.1 or later required"
	case !hasToken(r.Header["Connection"], "upgrade"):
		return http.StatusBadRequest, "Connection header lacks the upgrade token (is a proxy dropping it?)"
	case !version13:
		return http.StatusUpgradeRequired, "Sec-WebSocket-Version must be 13"
	case r.ContentLength != 0 || len(r.TransferEncoding) > 0:
		return http.StatusBadRequest, "handshake must not have a body"
	case len(keys) == 0:
		return http.StatusBadRequest, "missing Sec-WebSocket-Key"
	case len(keys) > 1:
		return http.StatusBadRequest, "several Sec-WebSocket-Key headers"
	case !validKey(keys[0]):
		return http.StatusBadRequest, "Sec-WebSocket-Key is not 16 bytes of base64"
	}
	return 0, ""
}

// isVersion13 reports whether the request names version 13 and only it:
// coder/websocket, which performs the upgrade, accepts nothing else, so a
// list such as "13, 8" gets the 426 here rather than a 400 from Accept.
func isVersion13(values []string) bool {
	return len(values) == 1 && strings.Trim(values[0], " \t") == "13"
}

// validKey reports whether k is the base64 encoding of exactly 16 bytes.
func validKey(k string) bool {
	k = strings.TrimSpace(k)
	if len(k) != 24 {
		return false
	}
	var buf [18]byte // DecodedLen(24)
	n, err := base64.StdEncoding.Decode(buf[:], []byte(k))
	return err == nil && n == 16
}

// hasToken reports whether any of the comma-separated lists in values
// contains token, compared case-insensitively (RFC 9110 section 5.6.1).
func hasToken(values []string, token string) bool {
	for _, v := range values {
		for t := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(strings.Trim(t, " \t"), token) {
				return true
			}
		}
	}
	return false
}

// parseProtocols splits the Sec-WebSocket-Protocol lists in values.
func parseProtocols(values []string) []string {
	var out []string
	for _, v := range values {
		for _, p := range strings.Split(v, ",") {
			if p = strings.Trim(p, " \t"); p != "" {
				out = append(out, p)
			}
		}
	}
	return out
}
