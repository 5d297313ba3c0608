package chiws

import (
	"net/http"
	"unicode/utf8"

	"github.com/go-chi/chi/v5"
	"github.com/go-chi/chi/v5/middleware"
	"go.uber.org/zap"
)

// Log field keys: short lowerCamel names, the same in every message, so
// that log queries can rely on them.
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
)

// maxLogValue bounds every request-controlled string that reaches a log
// line, so that a client cannot make the server write megabytes of logs.
const maxLogValue = 256

// clip truncates s to maxLogValue bytes on a rune boundary, marking the cut.
func clip(s string) string {
	if len(s) <= maxLogValue {
		return s
	}
	cut := maxLogValue
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "...(truncated)"
}

// requestFields describes a request: route (chi's pattern when routed),
// path, host, origin, remote address and chi's request ID when present.
func requestFields(r *http.Request) []zap.Field {
	f := append(make([]zap.Field, 0, 14),
		zap.String(keyRoute, routeOf(r)),
		zap.String(keyPath, clip(r.URL.Path)),
		zap.String(keyHost, clip(r.Host)),
		zap.String(keyOrigin, clip(r.Header.Get("Origin"))),
		zap.String(keyRemoteAddr, clip(r.RemoteAddr)),
	)
	if id := middleware.GetReqID(r.Context()); id != "" {
		f = append(f, zap.String(keyRequestID, clip(id)))
	}
	return f
}

// routeOf returns chi's route pattern ("/rooms/{id}") when the request was
// routed by chi, else the path.
func routeOf(r *http.Request) string {
	if rc := chi.RouteContext(r.Context()); rc != nil {
		if p := rc.RoutePattern(); p != "" {
			return clip(p)
		}
	}
	return clip(r.URL.Path)
}

// logReject logs a refused upgrade at Debug: a client can cause it at will.
func (m *Middleware) logReject(r *http.Request, msg, reason string) {
	if ce := m.cfg.log.Check(zap.DebugLevel, "websocket "+msg); ce != nil {
		ce.Write(append(requestFields(r), zap.String(keyReason, clip(reason)))...)
	}
}
