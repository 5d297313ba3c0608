package snippets

import (
	"net/http"

	"github.com/chiws/chiws"
	"github.com/go-chi/chi/v5"
	"github.com/go-chi/chi/v5/middleware"
)

// ReadmeRoutes is the README's Throttle example: Throttle on the HTTP
// routes only, MaxConnections for the sockets.
func ReadmeRoutes(ws *chiws.Middleware, socket, api http.HandlerFunc) chi.Router {
	r := chi.NewRouter()
	r.Use(ws.Handler)
	r.Get("/ws", socket) // bounded by Options.MaxConnections
	r.Group(func(r chi.Router) {
		r.Use(middleware.Throttle(100)) // HTTP routes only
		r.Get("/api/items", api)
	})
	return r
}
