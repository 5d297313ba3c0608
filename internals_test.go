package chiws

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"testing"
	"time"
	"unsafe"
)

// TestSocketSizeClass keeps the per-socket allocation in the 640-byte size
// class: the next class is 704 bytes, paid by every open socket (see the
// idle footprint in docs/benchmarks.md). A new field must make room.
func TestSocketSizeClass(t *testing.T) {
	if n := unsafe.Sizeof(socket{}); n > 640 {
		t.Fatalf("socket is %d bytes, over the 640-byte size class", n)
	}
}

// TestCancelCtxKeyFound: connContext.Value hides the context package's
// cancellation key, found by asking context.Cause (see cancelCtxKey).
func TestCancelCtxKeyFound(t *testing.T) {
	if cancelCtxKey == nil {
		t.Fatal("context.Cause asked no key: Conn.Context cannot hide the request's cancellation")
	}
	parent, cancel := context.WithCancelCause(context.Background())
	cancel(errors.New("request's cause"))
	if v := parent.Value(cancelCtxKey); v == nil {
		t.Fatalf("key %v finds no cancellation state in a cancel context", cancelCtxKey)
	}
}

// TestPingContextMechanics pins what pingContext relies on in the context
// package: deriving a context with a timeout from it attaches the child
// through AfterFunc (no watcher goroutine), and closing Done afterwards
// does not cancel the child. (TestKeepAlivePingDoesNotWaitForPong pins the
// coder/websocket side over a real socket.)
func TestPingContextMechanics(t *testing.T) {
	s := &socket{}
	s.pingDone = make(chan struct{})
	s.pingState.Store(pingArmed)
	before := runtime.NumGoroutine()
	child, cancel := context.WithTimeout((*pingContext)(s), time.Minute)
	defer cancel()
	if st := s.pingState.Load(); st != pingRegistered {
		t.Fatalf("state %d after WithTimeout, want pingRegistered: the child was not attached through AfterFunc", st)
	}
	if n := runtime.NumGoroutine(); n != before {
		t.Fatalf("%d goroutines after WithTimeout, %d before: the context package watches Done in a goroutine", n, before)
	}
	s.pingState.Store(pingWritten)
	close(s.pingDone)
	select {
	case <-child.Done():
		t.Fatal("closing pingContext's Done cancelled the write's context")
	default:
	}
	if err := (*pingContext)(s).Err(); !errors.Is(err, context.Canceled) {
		t.Fatalf("Err = %v after Done closed, want context.Canceled", err)
	}
}

// TestPingEndedCountsOnlyWrittenPings: pingContext's Done may close early,
// on another writer's bytes, and the ping then still fail to be written
// within coder/websocket's five seconds. Ping's error decides: a deadline
// is a ping not sent, whatever pingContext's state.
func TestPingEndedCountsOnlyWrittenPings(t *testing.T) {
	s := &socket{m: New(Options{})}
	s.pingState.Store(pingWritten) // Done closed early by another write
	s.pingEnded(fmt.Errorf("failed to ping: failed to write control frame: %w", context.DeadlineExceeded), true)
	if n := s.m.Stats().PingsSent; n != 0 {
		t.Fatalf("a ping that timed out waiting for the write lock was counted as sent (%d)", n)
	}
	s.pingEnded(fmt.Errorf("failed to ping: failed to wait for pong: %w", context.Canceled), true)
	if n := s.m.Stats().PingsSent; n != 1 {
		t.Fatalf("PingsSent = %d after a written ping, want 1", n)
	}
}
