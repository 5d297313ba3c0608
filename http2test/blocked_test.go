package http2test

import (
	"context"
	"errors"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chiws/chiws"
	"github.com/coder/websocket"
	"github.com/go-chi/chi/v5"
)

// TestWriteTimeoutToStalledStream: a write with a deadline, to a client
// that stopped reading its stream, fails at its deadline. coder/websocket
// closes the connection when a write's context ends; closing the stream
// must end the write blocked by flow control, as closing a TCP connection
// would.
func TestWriteTimeoutToStalledStream(t *testing.T) {
	took := make(chan time.Duration, 1)
	s := startServer(t, "TLS", chiws.Options{KeepAliveInterval: -1}, nil, func(r chi.Router) {
		r.Get("/ws", func(w http.ResponseWriter, r *http.Request) {
			c, err := chiws.Accept(w, r, nil)
			if err != nil {
				return
			}
			for {
				ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
				start := time.Now()
				err := c.Write(ctx, websocket.MessageBinary, make([]byte, 64<<10))
				cancel()
				if err != nil {
					took <- time.Since(start)
					return
				}
			}
		})
	})
	s.dial(t, "/ws", nil) // never reads
	select {
	case d := <-took:
		t.Logf("the write to the stalled stream failed after %v", d)
		if d > 2*time.Second {
			t.Errorf("a write with a 300ms deadline took %v", d)
		}
	case <-testCtx(t).Done():
		t.Fatal("a write with a 300ms deadline is still blocked")
	}
}

// TestShutdownDeadlineEndsBlockedWriter: at Shutdown's deadline, a socket
// whose handler is stuck in a write to a client that stopped reading is
// aborted (the stream is reset), so the handler returns.
func TestShutdownDeadlineEndsBlockedWriter(t *testing.T) {
	var written atomic.Int64
	handlerDone := make(chan error, 1)
	s := startServer(t, "TLS", chiws.Options{KeepAliveInterval: time.Minute}, nil, func(r chi.Router) {
		r.Get("/ws", func(w http.ResponseWriter, r *http.Request) {
			c, err := chiws.Accept(w, r, nil)
			if err != nil {
				return
			}
			c.CloseRead(c.Context())
			for {
				if err := c.Write(context.Background(), websocket.MessageBinary, make([]byte, 1<<20)); err != nil {
					handlerDone <- err
					return
				}
				written.Add(1 << 20)
			}
		})
	})
	s.dial(t, "/ws", nil) // never reads: its 4 MiB stream window fills
	waitFor(t, "most of the client's window to fill", func() bool { return written.Load() >= 3<<20 })
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err := s.ws.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Shutdown = %v, want DeadlineExceeded", err)
	}
	select {
	case err := <-handlerDone:
		t.Logf("the handler's write ended with %v", err)
	case <-testCtx(t).Done():
		t.Fatal("the handler is still blocked in its write after Shutdown returned")
	}
}
