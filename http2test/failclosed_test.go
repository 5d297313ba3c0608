package http2test

import (
	"io"
	"log"
	"net/http"
	"testing"

	"github.com/chiws/chiws"
	"github.com/coder/websocket"
	"github.com/go-chi/chi/v5"
	"github.com/go-chi/chi/v5/middleware"
)

// TestRouteWithoutAcceptRefused: RFC 8441 takes any 2xx for an open
// socket, so an extended CONNECT whose route answers without accepting (a
// page, a body without WriteHeader, nothing at all) gets 501, never a 2xx
// and never the route's body as frames. A route's own error status passes.
func TestRouteWithoutAcceptRefused(t *testing.T) {
	forModes(t, func(t *testing.T, mode string) {
		s := startServer(t, mode, chiws.Options{}, nil, func(r chi.Router) {
			r.Get("/page", func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "text/html")
				w.WriteHeader(http.StatusOK)
				io.WriteString(w, "<html>not a socket</html>")
			})
			r.Get("/body", func(w http.ResponseWriter, r *http.Request) {
				io.WriteString(w, "implicit 200")
			})
			r.Get("/nothing", func(w http.ResponseWriter, r *http.Request) {})
			r.Get("/forbidden", func(w http.ResponseWriter, r *http.Request) {
				http.Error(w, "no", http.StatusForbidden)
			})
		})
		for path, want := range map[string]int{
			"/page": http.StatusNotImplemented, "/body": http.StatusNotImplemented,
			"/nothing": http.StatusNotImplemented, "/forbidden": http.StatusForbidden,
		} {
			var got int
			c, _, err := websocket.Dial(testCtx(t), s.url(path), s.dialOptions(nil, func(resp *http.Response) { got = resp.StatusCode }))
			if err == nil {
				c.CloseNow()
				t.Errorf("%s: the socket opened", path)
				continue
			}
			if got != want {
				t.Errorf("%s: status %d, want %d", path, got, want)
			}
		}
	})
}

// TestCompressStackOverHTTP2: a middleware stack that works over HTTP/1.1
// works over HTTP/2: chi's Compress and Logger wrap the writer in types
// that cannot hijack an HTTP/2 stream, and the 200 goes out only once the
// socket is set up.
func TestCompressStackOverHTTP2(t *testing.T) {
	forModes(t, func(t *testing.T, mode string) {
		var s *h2Server
		s = startServer(t, mode, chiws.Options{}, nil, func(r chi.Router) {
			quiet := &middleware.DefaultLogFormatter{Logger: log.New(io.Discard, "", 0)}
			r.Use(middleware.RequestLogger(quiet), middleware.Compress(5)) // middleware.Logger, quiet
			r.Get("/ws", echo)
		})
		for name, c := range map[string]*websocket.Conn{
			"HTTP/2":   func() *websocket.Conn { c, _ := s.dial(t, "/ws", nil); return c }(),
			"HTTP/1.1": s.dialHTTP1(t, "/ws"),
		} {
			ctx := testCtx(t)
			if err := c.Write(ctx, websocket.MessageText, []byte("compressed stack")); err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			if _, p, err := c.Read(ctx); err != nil || string(p) != "compressed stack" {
				t.Fatalf("%s: echo %q %v", name, p, err)
			}
			c.Close(websocket.StatusNormalClosure, "")
		}
	})
}
