package http2test

import (
	"bytes"
	"context"
	"net/http"
	"sync/atomic"
	"testing"

	"github.com/chiws/chiws"
	"github.com/coder/websocket"
	"github.com/go-chi/chi/v5"
)

// TestFlowControlUnreadSocket: with the HTTP/2 settings that docs/http2.md
// recommends, a socket whose handler stops reading while its client keeps
// sending holds at most its stream's window, and a busy socket on the same
// connection goes on. (With net/http's defaults, the unread socket takes
// the whole connection window and stalls the busy one.)
func TestFlowControlUnreadSocket(t *testing.T) {
	s := startServer(t, "TLS", chiws.Options{KeepAliveInterval: -1}, func(srv *http.Server) {
		srv.HTTP2 = &http.HTTP2Config{
			MaxReceiveBufferPerStream:     64 << 10,
			MaxReceiveBufferPerConnection: 4<<20 - 1,
		}
	}, func(r chi.Router) {
		r.Get("/unread", func(w http.ResponseWriter, r *http.Request) {
			c, err := chiws.Accept(w, r, nil)
			if err != nil {
				return
			}
			_ = c.Wait(context.Background()) // never reads
		})
		r.Get("/echo", echo)
	})
	unread, _ := s.dial(t, "/unread", nil)
	busy, _ := s.dial(t, "/echo", nil) // same transport: same connection

	const msg = 16 << 10
	var sent atomic.Int64
	writerDone := make(chan struct{})
	go func() { // owned by the test: ends when unread is closed below
		defer close(writerDone)
		for sent.Load() < 8<<20 {
			if err := unread.Write(context.Background(), websocket.MessageBinary, make([]byte, msg)); err != nil {
				return
			}
			sent.Add(msg)
		}
	}()
	waitFor(t, "the unread socket to take its window", func() bool { return sent.Load() >= 48<<10 })

	ctx := testCtx(t)
	payload := bytes.Repeat([]byte("x"), msg)
	for i := range 128 { // 2 MiB each way: more than the default windows
		if err := busy.Write(ctx, websocket.MessageBinary, payload); err != nil {
			t.Fatalf("busy socket, message %d: %v (the unread socket absorbed %d bytes)", i, err, sent.Load())
		}
		if _, p, err := busy.Read(ctx); err != nil || len(p) != msg {
			t.Fatalf("busy socket, echo %d: %d bytes, %v (the unread socket absorbed %d bytes)", i, len(p), err, sent.Load())
		}
	}
	t.Logf("the unread socket absorbed %d bytes; the busy one echoed 2 MiB", sent.Load())
	if n := sent.Load(); n >= 1<<20 {
		t.Errorf("the unread socket absorbed %d bytes, more than its 64 KiB stream window allows", n)
	}
	busy.Close(websocket.StatusNormalClosure, "")
	unread.CloseNow()
	<-writerDone
}
