package chiws

import (
	"cmp"
	"net/http"
	"unicode/utf8"

	"github.com/go-chi/chi/v5"
	"github.com/go-chi/chi/v5/middleware"
	"go.uber.org/zap"
)

// Log field keys: short lowerCamel names, the same in every message.
const (
	keyRoute            = "route"
	keyProto            = "proto"
	keyWriter           = "writer"
	keyPath             = "path"
	keyHost             = "host"
	keyOrigin           = "origin"
	keyRemoteAddr       = "remoteAddr"
	keyRequestID        = "requestID"
	keyReason           = "reason"
	keySubprotocol      = "subprotocol"
	keyCompression      = "compression"
	keyKeepAlive        = "keepAlive"
	keyKeepAliveTimeout = "keepAliveTimeout"
	keyReadLimit        = "readLimit"
	keyCloseCode        = "closeCode"
	keyCloseReason      = "closeReason"
	keyClosedBy         = "closedBy"
	keyDuration         = "duration"
	keyMessagesIn       = "messagesIn"
	keyMessagesOut      = "messagesOut"
	keyBytesIn          = "bytesIn"
	keyBytesOut         = "bytesOut"
	keySockets          = "sockets"
	keyPanic            = "panic"
	keyStack            = "stack"
	keyCause            = "cause"
)

// maxLogValue bounds each request-controlled string in a log line.
const maxLogValue = 256

func clip(s string) string { // on a rune boundary, marking the cut
	if len(s) <= maxLogValue {
		return s
	}
	cut := maxLogValue
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "...(truncated)"
}

// reqInfo is what the logs say of a request, kept instead of the request.
type reqInfo struct {
	route, path, host, origin, remoteAddr, requestID string
}

func newReqInfo(r *http.Request) reqInfo {
	route := r.URL.Path // or chi's pattern ("/rooms/{id}") when chi routed r
	if rc := chi.RouteContext(r.Context()); rc != nil {
		route = cmp.Or(rc.RoutePattern(), route)
	}
	return reqInfo{
		route:      clip(route),
		path:       clip(r.URL.Path),
		host:       clip(r.Host),
		origin:     clip(r.Header.Get("Origin")),
		remoteAddr: clip(r.RemoteAddr),
		requestID:  clip(middleware.GetReqID(r.Context())),
	}
}

// fields returns the request's log fields, with room for the close log's.
func (i reqInfo) fields() []zap.Field {
	f := append(make([]zap.Field, 0, 16),
		zap.String(keyRoute, i.route),
		zap.String(keyPath, i.path),
		zap.String(keyHost, i.host),
		zap.String(keyOrigin, i.origin),
		zap.String(keyRemoteAddr, i.remoteAddr),
	)
	if i.requestID != "" {
		f = append(f, zap.String(keyRequestID, i.requestID))
	}
	return f
}

func requestFields(r *http.Request) []zap.Field { return newReqInfo(r).fields() }

// logReject logs a refused upgrade at Debug: a client can cause it at will.
func (m *Middleware) logReject(r *http.Request, msg, reason string) {
	if ce := m.cfg.log.Check(zap.DebugLevel, "websocket "+msg); ce != nil {
		ce.Write(append(requestFields(r), zap.String(keyReason, clip(reason)))...)
	}
}
