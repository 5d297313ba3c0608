package wstest

import (
	"net/http"
	"net/http/httptest"

	"github.com/chiws/chiws"
)

// OriginAllowed reports whether ws lets r, made an upgrade request, through
// to the route: its origin policy answers 403 before any route runs.
func OriginAllowed(ws *chiws.Middleware, r *http.Request) bool {
	r.Header.Set("Upgrade", "websocket")
	r.Header.Set("Connection", "Upgrade")
	r.Header.Set("Sec-WebSocket-Version", "13")
	r.Header.Set("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
	rec := httptest.NewRecorder()
	ws.Handler(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusNoContent)
	})).ServeHTTP(rec, r)
	return rec.Code != http.StatusForbidden
}
