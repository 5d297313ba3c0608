package redisbroker_test

import (
	"context"
	"errors"
	"fmt"
	"syscall"
	"testing"
	"time"

	"github.com/chiws/chiws/broadcast"
	"github.com/chiws/chiws/broadcast/internal/fleettest"
	"github.com/chiws/chiws/broadcast/redisbroker"
)

// TestExpiredSubscribeKeepsPartition: a Subscribe whose context has ended
// fails alone. The partition's connection, which every topic of the
// partition shares, is not written with that context's deadline, so it
// is neither broken nor replaced, and the partition stays up.
func TestExpiredSubscribeKeepsPartition(t *testing.T) {
	s := startRedis(t)
	c := brokerClient(t, s)
	const interval = 50 * time.Millisecond
	b, err := redisbroker.New(c, redisbroker.Options{Partitions: 1, HealthInterval: interval, HealthTimeout: 4 * interval})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	rec := recordHealth(t, b)
	ctx := timeoutCtx(t)
	h, got := receiver()
	sub, err := b.Subscribe(ctx, "a", h)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })

	expired, cancel := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	defer cancel()
	if _, err := b.Subscribe(expired, "b", func([]byte) {}); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Subscribe with an expired context = %v, want DeadlineExceeded", err)
	}
	// Deadlines that end during the write itself: 0 to 79 µs.
	for i := range 400 {
		dctx, cancel := context.WithTimeout(context.Background(), time.Duration(i%80)*time.Microsecond)
		if s, err := b.Subscribe(dctx, fmt.Sprintf("c%d", i), func([]byte) {}); err == nil {
			_ = s.Unsubscribe()
		}
		cancel()
	}
	if err := b.Publish(ctx, "a", []byte("still")); err != nil {
		t.Fatal(err)
	}
	await(t, got, "still")
	// Watch a few probe rounds: a broken connection is replaced, and its
	// partition reported down, within one.
	watch := time.NewTimer(6 * interval)
	defer watch.Stop()
	<-watch.C
	if down := rec.downSeen(); len(down) != 0 {
		t.Fatalf("parts down after an expired Subscribe: %v", down)
	}
}

// TestCloseWakesSubscribe: Close ends a Subscribe still waiting for
// Redis's confirmation, with ErrBrokerClosed.
func TestCloseWakesSubscribe(t *testing.T) {
	s := startRedis(t)
	c := brokerClient(t, s)
	const interval = 100 * time.Millisecond
	b, err := redisbroker.New(c, redisbroker.Options{Partitions: 1, HealthInterval: interval, HealthTimeout: interval})
	if err != nil {
		t.Fatal(err)
	}
	closed := false
	t.Cleanup(func() {
		if !closed {
			_ = b.Close()
		}
	})
	rec := recordHealth(t, b)
	s.signal(t, syscall.SIGSTOP) // no confirmation will come
	t.Cleanup(func() { s.signal(t, syscall.SIGCONT) })
	done := make(chan error, 1)
	go func() { // owned by the test: it waits for done below
		_, err := b.Subscribe(context.Background(), "room", func([]byte) {})
		done <- err
	}()
	rec.wait(t, "the frozen partition down", allDown) // by then Subscribe waits for its confirmation
	closed = true
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if !errors.Is(err, broadcast.ErrBrokerClosed) {
			t.Fatalf("Subscribe after Close = %v, want ErrBrokerClosed", err)
		}
	case <-time.After(fleettest.Timeout):
		t.Fatal("Subscribe still waiting after Close")
	}
}
