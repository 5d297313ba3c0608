package main

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/coder/websocket"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestRunShutdown starts the guide's server, opens a socket, cancels the
// server's context as a SIGTERM would, and checks that the client sees
// 1001 Going Away and that run returns nil once the handler has returned.
func TestRunShutdown(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	sig, stop := context.WithCancel(ctx)
	defer stop()
	ran := make(chan error, 1)
	go func() { ran <- run(sig, ln) }()

	c, _, err := websocket.Dial(ctx, "ws://"+ln.Addr().String()+"/ws", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseNow()
	if err := c.Write(ctx, websocket.MessageText, []byte("hi")); err != nil {
		t.Fatal(err)
	}
	if _, p, err := c.Read(ctx); err != nil || string(p) != "hi" {
		t.Fatalf("echo: %q %v", p, err)
	}

	stop() // the signal
	_, _, err = c.Read(ctx)
	if got := websocket.CloseStatus(err); got != websocket.StatusGoingAway {
		t.Errorf("client read after shutdown: %v (status %d), want 1001", err, got)
	}
	select {
	case err := <-ran:
		if err != nil {
			t.Errorf("run: %v", err)
		}
	case <-ctx.Done():
		t.Fatal("run did not return after shutdown")
	}
	if _, _, err := websocket.Dial(ctx, "ws://"+ln.Addr().String()+"/ws", nil); err == nil ||
		errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("dial after shutdown: %v, want connection refused", err)
	}
}
