package natsbroker_test

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chiws/chiws/broadcast"
	"github.com/chiws/chiws/broadcast/internal/fleettest"
	"github.com/chiws/chiws/broadcast/natsbroker"
	"github.com/chiws/chiws/internal/wstest"
)

// Health options for tests: a silent peer is down within 0.9 s.
const (
	testInterval = 100 * time.Millisecond
	testTimeout  = 800 * time.Millisecond
)

// fast returns broker options named name with the test health timings.
func fast(name string) natsbroker.Options {
	return natsbroker.Options{Name: name, HealthInterval: testInterval, HealthTimeout: testTimeout}
}

// startServer starts an embedded server that the test's cleanup stops.
func startServer(t *testing.T, o natsbroker.EmbeddedOptions) *natsbroker.Embedded {
	t.Helper()
	e, err := natsbroker.StartEmbedded(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Shutdown)
	return e
}

// connectTo connects a broker in-process to e; the cleanup closes it
// before e stops (cleanups run last registered first).
func connectTo(t *testing.T, e *natsbroker.Embedded, o natsbroker.Options) *natsbroker.Broker {
	t.Helper()
	b, err := e.Connect(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	return b
}

// startCluster starts n embedded servers joined by routes to the first,
// and waits for the full mesh.
func startCluster(t *testing.T, n int, o natsbroker.EmbeddedOptions) []*natsbroker.Embedded {
	t.Helper()
	var es []*natsbroker.Embedded
	for i := range n {
		oi := o
		oi.Name = fmt.Sprintf("s%d", i)
		if oi.ClusterAddr == "" {
			oi.ClusterAddr = "127.0.0.1:0"
		}
		if i > 0 {
			oi.Routes = []string{es[0].ClusterURL()}
		}
		es = append(es, startServer(t, oi))
	}
	waitRoutes(t, n-1, es...)
	return es
}

// waitRoutes waits until every server routes to n others.
func waitRoutes(t *testing.T, n int, es ...*natsbroker.Embedded) {
	t.Helper()
	for _, e := range es {
		wstest.WaitFor(t, fleettest.Timeout, fmt.Sprintf("routes to %d servers on %s", n, e.Server().Name()),
			func() bool { return e.Server().NumRemotes() == n })
	}
}

// waitHealth waits until cond holds for b's Health, woken by its
// notifications, and returns that Health.
func waitHealth(t *testing.T, b *natsbroker.Broker, what string, cond func(broadcast.Health) bool) broadcast.Health {
	t.Helper()
	h, err := awaitHealth(b, what, cond)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// awaitHealth is waitHealth for any goroutine: it returns an error at the
// deadline.
func awaitHealth(b *natsbroker.Broker, what string, cond func(broadcast.Health) bool) (broadcast.Health, error) {
	changed := make(chan struct{}, 1)
	stop := b.NotifyHealth(func(broadcast.Health) {
		select {
		case changed <- struct{}{}:
		default:
		}
	})
	defer stop()
	deadline := time.NewTimer(fleettest.Timeout)
	defer deadline.Stop()
	for {
		// Registered before this read: a change after it wakes us.
		h := b.Health()
		if cond(h) {
			return h, nil
		}
		select {
		case <-changed:
		case <-deadline.C:
			return h, fmt.Errorf("%s: timed out; health is %s", what, describe(h))
		}
	}
}

// describe formats h for failure messages.
func describe(h broadcast.Health) string {
	var s []string
	for _, p := range h.Parts {
		st := "up"
		if !p.Up {
			st = fmt.Sprintf("down (%v)", p.Err)
		}
		s = append(s, p.Name+": "+st)
	}
	return fmt.Sprintf("up=%v [%s]", h.Up, strings.Join(s, "; "))
}

// part returns h's part whose name ends with suffix (a peer's ID).
func part(h broadcast.Health, suffix string) (broadcast.PartHealth, bool) {
	for _, p := range h.Parts {
		if strings.HasSuffix(p.Name, suffix) {
			return p, true
		}
	}
	return broadcast.PartHealth{}, false
}

// seesUp holds when h is up and has an up part for each peer.
func seesUp(peers ...*natsbroker.Broker) func(broadcast.Health) bool {
	return func(h broadcast.Health) bool {
		for _, p := range peers {
			if ph, ok := part(h, p.ID()); !ok || !ph.Up {
				return false
			}
		}
		return h.Up
	}
}

// seesDown holds when h has a down part for peer.
func seesDown(peer *natsbroker.Broker) func(broadcast.Health) bool {
	return func(h broadcast.Health) bool {
		ph, ok := part(h, peer.ID())
		return ok && !ph.Up && !h.Up
	}
}

// peerCount is how many peer parts h has.
func peerCount(h broadcast.Health) int {
	n := 0
	for _, p := range h.Parts {
		if strings.HasPrefix(p.Name, "peer ") {
			n++
		}
	}
	return n
}

// bothSeeDown waits, on both at once, until alpha (a) reports beta (b)
// down and beta reports alpha down, and returns what each reported and
// how long after cut.
func bothSeeDown(t *testing.T, a, b *natsbroker.Broker, cut time.Time) (hA, hB broadcast.Health, dA, dB time.Duration) {
	t.Helper()
	var wg sync.WaitGroup
	var errA, errB error
	wg.Add(2)
	go func() { // owned by bothSeeDown: waited for below
		defer wg.Done()
		hA, errA = awaitHealth(a, "alpha reports beta down", seesDown(b))
		dA = time.Since(cut)
	}()
	go func() { // likewise
		defer wg.Done()
		hB, errB = awaitHealth(b, "beta reports alpha down", seesDown(a))
		dB = time.Since(cut)
	}()
	wg.Wait()
	if err := errors.Join(errA, errB); err != nil {
		t.Fatal(err)
	}
	return hA, hB, dA, dB
}
