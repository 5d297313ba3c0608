package chiws

import (
	"encoding/base64"
	"net/http"
	"strings"
)

// isUpgradeAttempt reports whether r asks for a WebSocket (RFC 6455 section
// 4.2.1, or RFC 8441 over HTTP/2). Ordinary requests pay for it alone, so
// it must not allocate.
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
// upgrade attempt, and returns the status to answer and why (never request
// data) when it breaks one, or 0. An HTTP/2 stream is its own body and has
// no key. Version 13 must be the only one named: coder/websocket accepts
// nothing else, so "13, 8" gets 426 (RFC 6455 section 4.4), not Accept's 400.
func checkHandshake(r *http.Request) (status int, reason string) {
	keys, versions := r.Header["Sec-Websocket-Key"], r.Header["Sec-Websocket-Version"]
	version13 := len(versions) == 1 && strings.Trim(versions[0], " \t") == "13"
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

// parseProtocols splits the lists in values (a token has no space).
func parseProtocols(values []string) []string {
	return strings.FieldsFunc(strings.Join(values, ","), func(c rune) bool {
		return c == ',' || c == ' ' || c == '\t'
	})
}
