package http2test

import (
	"context"
	"testing"
	"time"

	"github.com/chiws/chiws"
	"github.com/coder/websocket"
	"github.com/go-chi/chi/v5"
)

// TestShutdownMixed: the documented sequence (the middleware's Shutdown
// registered with http.Server.RegisterOnShutdown, then the server's
// Shutdown) drains HTTP/2 and HTTP/1.1 sockets alike with 1001, well
// before its deadline. http.Server.Shutdown waits for HTTP/2 streams, so
// the other order would stall until the deadline.
func TestShutdownMixed(t *testing.T) {
	forModes(t, func(t *testing.T, mode string) {
		s := startServer(t, mode, chiws.Options{}, nil, func(r chi.Router) { r.Get("/ws", echo) })
		h2c, _ := s.dial(t, "/ws", nil)
		h1c := s.dialHTTP1(t, "/ws")
		waitFor(t, "two sockets", func() bool { return s.ws.Stats().Active == 2 })
		reads := make(chan error, 2)
		for _, c := range []*websocket.Conn{h2c, h1c} {
			go func() { // ends when the server closes c
				_, _, err := c.Read(context.Background())
				reads <- err
			}()
		}

		const deadline = 5 * time.Second
		ctx, cancel := context.WithTimeout(context.Background(), deadline)
		defer cancel()
		start := time.Now()
		drained := make(chan error, 1)
		s.Config.RegisterOnShutdown(func() { drained <- s.ws.Shutdown(ctx) })
		if err := s.Config.Shutdown(ctx); err != nil {
			t.Errorf("http.Server.Shutdown: %v", err)
		}
		if err := <-drained; err != nil {
			t.Errorf("Middleware.Shutdown: %v", err)
		}
		took := time.Since(start)
		t.Logf("both drained in %v", took)
		if took > deadline/2 {
			t.Errorf("shutdown took %v: it waited for the deadline", took)
		}
		for range 2 {
			if err := <-reads; websocket.CloseStatus(err) != websocket.StatusGoingAway {
				t.Errorf("client read %v, want 1001", err)
			}
		}
	})
}
