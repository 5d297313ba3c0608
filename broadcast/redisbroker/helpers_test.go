package redisbroker_test

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/chiws/chiws/broadcast"
	"github.com/chiws/chiws/broadcast/internal/fleettest"
	"github.com/chiws/chiws/broadcast/redisbroker"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// healthRecord keeps every Health a broker notified, in order.
type healthRecord struct {
	mu   sync.Mutex
	all  []broadcast.Health
	at   []time.Time // when each arrived
	next int         // the first one wait has not looked at
	wake chan struct{}
}

// recordHealth records b's notifications until the test ends.
func recordHealth(t *testing.T, b *redisbroker.Broker) *healthRecord {
	t.Helper()
	r := &healthRecord{wake: make(chan struct{}, 1)}
	t.Cleanup(b.NotifyHealth(func(h broadcast.Health) {
		r.mu.Lock()
		r.all = append(r.all, h)
		r.at = append(r.at, time.Now())
		r.mu.Unlock()
		select {
		case r.wake <- struct{}{}:
		default:
		}
	}))
	return r
}

// wait returns the first notification since the last wait for which cond
// holds, and when it arrived.
func (r *healthRecord) wait(t *testing.T, what string, cond func(broadcast.Health) bool) (broadcast.Health, time.Time) {
	t.Helper()
	deadline := time.NewTimer(fleettest.Timeout)
	defer deadline.Stop()
	for {
		r.mu.Lock()
		for ; r.next < len(r.all); r.next++ {
			if cond(r.all[r.next]) {
				h, at := r.all[r.next], r.at[r.next]
				r.next++
				r.mu.Unlock()
				return h, at
			}
		}
		r.mu.Unlock()
		select {
		case <-r.wake:
		case <-deadline.C:
			t.Fatalf("the broker never reported %s", what)
		}
	}
}

// downSeen returns the names of every part reported down so far.
func (r *healthRecord) downSeen() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var names []string
	for _, h := range r.all {
		for _, n := range h.Down() {
			if !slices.Contains(names, n) {
				names = append(names, n)
			}
		}
	}
	return names
}

func isUp(h broadcast.Health) bool    { return h.Up }
func allDown(h broadcast.Health) bool { return len(h.Down()) == len(h.Parts) }

// observedLogger returns a logger that records entries from Debug up.
func observedLogger() (*zap.Logger, *observer.ObservedLogs) {
	core, logs := observer.New(zapcore.DebugLevel)
	return zap.New(core), logs
}

// receiver returns a handler that sends what it receives to a channel,
// never blocking the broker (it drops once the channel is full).
func receiver() (func([]byte), chan string) {
	got := make(chan string, 256)
	return func(p []byte) {
		select {
		case got <- string(p):
		default:
		}
	}, got
}

// await waits for want on got, skipping anything else.
func await(t *testing.T, got chan string, want string) {
	t.Helper()
	deadline := time.NewTimer(fleettest.Timeout)
	defer deadline.Stop()
	for {
		select {
		case m := <-got:
			if m == want {
				return
			}
		case <-deadline.C:
			t.Fatalf("%q never received", want)
		}
	}
}

// timeoutCtx is a context bounded by fleettest.Timeout.
func timeoutCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), fleettest.Timeout)
	t.Cleanup(cancel)
	return ctx
}
