package natsbroker_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/chiws/chiws/broadcast"
	"github.com/chiws/chiws/broadcast/internal/fleettest"
	"github.com/chiws/chiws/broadcast/natsbroker"
	"github.com/coder/websocket"
)

const syncTrials = 100

// probePeriod paces the probes that tell a lost message from a late one.
const probePeriod = 5 * time.Millisecond

// TestJoinSync: on a cluster of three embedded servers, a subscription on
// one instance, then at once a message from another: the message arrives,
// 100 times out of 100. (Without the join sync, interest reaches the other
// servers after Subscribe returns, and 8 to 10 first messages in 100 were
// lost.) Whether the first message was lost is known without a timeout:
// the publisher then sends probes, which arrive after it (one publisher,
// one topic: in order).
func TestJoinSync(t *testing.T) {
	es := startCluster(t, 3, natsbroker.EmbeddedOptions{})
	var bs []*natsbroker.Broker
	for i, e := range es {
		bs = append(bs, connectTo(t, e, fast(fmt.Sprintf("n%d", i))))
	}
	for i, b := range bs {
		var others []*natsbroker.Broker
		for j, o := range bs {
			if j != i {
				others = append(others, o)
			}
		}
		waitHealth(t, b, fmt.Sprintf("n%d sees the others", i), seesUp(others...))
	}
	ctx, cancel := context.WithTimeout(context.Background(), fleettest.Timeout)
	defer cancel()
	lost := 0
	start := time.Now()
	for i := range syncTrials {
		sub, pub := bs[i%3], bs[(i+1+i/3%2)%3]
		topic := fmt.Sprintf("sync.%d", i)
		got := make(chan string, 1024)
		s, err := sub.Subscribe(ctx, topic, func(p []byte) {
			select {
			case got <- string(p):
			default:
			}
		})
		if err != nil {
			t.Fatal(err)
		}
		if err := pub.Publish(ctx, topic, []byte("first")); err != nil {
			t.Fatal(err)
		}
		first := firstOf(t, got, func() error { return pub.Publish(ctx, topic, []byte("probe")) })
		if first != "first" {
			lost++
		}
		_ = s.Unsubscribe()
	}
	t.Logf("%d of %d first messages lost; %v per trial", lost, syncTrials, (time.Since(start) / syncTrials).Round(time.Microsecond))
	if lost > 0 {
		t.Errorf("%d of %d messages published right after a Subscribe on another instance were lost", lost, syncTrials)
	}
}

// firstOf returns the first message on got, calling probe every
// probePeriod until one arrives.
func firstOf(t *testing.T, got <-chan string, probe func() error) string {
	t.Helper()
	tick := time.NewTicker(probePeriod)
	defer tick.Stop()
	deadline := time.NewTimer(fleettest.Timeout)
	defer deadline.Stop()
	for {
		select {
		case m := <-got:
			return m
		case <-tick.C:
			if err := probe(); err != nil {
				t.Fatalf("probe: %v", err)
			}
		case <-deadline.C:
			t.Fatal("neither the message nor a probe arrived")
		}
	}
}

// TestJoinSyncHub: the same through hubs and real WebSockets: a client
// joins a room on one instance (Join returns), and a message published at
// once on the other reaches it, 100 times out of 100.
func TestJoinSyncHub(t *testing.T) {
	es := startCluster(t, 2, natsbroker.EmbeddedOptions{})
	a := connectTo(t, es[0], fast("alpha"))
	b := connectTo(t, es[1], fast("beta"))
	waitHealth(t, a, "alpha sees beta", seesUp(b))
	waitHealth(t, b, "beta sees alpha", seesUp(a))
	f := fleettest.Start(t, []fleettest.Node{{Broker: a}, {Broker: b}}, broadcast.Options{})
	joinNode, pubHub := f.Nodes[0], f.Nodes[1].Hub
	ctx, cancel := context.WithTimeout(context.Background(), fleettest.Timeout)
	defer cancel()
	lost := 0
	for i := range syncTrials {
		topic := fmt.Sprintf("room.%d", i)
		c := joinNode.Dial(t, 0, topic)
		select {
		case <-joinNode.Joined: // Join has returned
		case <-ctx.Done():
			t.Fatal("member never joined")
		}
		if err := pubHub.Publish(ctx, topic, websocket.MessageText, []byte("first")); err != nil {
			t.Fatal(err)
		}
		first := readFirst(t, c.Conn, func() error {
			return pubHub.Publish(ctx, topic, websocket.MessageText, []byte(fleettest.Probe))
		})
		if first != "first" {
			lost++
		}
		_ = c.Conn.CloseNow()
	}
	t.Logf("%d of %d first messages lost", lost, syncTrials)
	if lost > 0 {
		t.Errorf("%d of %d messages published right after a Join on another instance were lost", lost, syncTrials)
	}
}

// readFirst reads c's first message while a goroutine calls probe every
// probePeriod.
func readFirst(t *testing.T, c *websocket.Conn, probe func() error) string {
	t.Helper()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // owned by readFirst: stop ends it, and readFirst waits
		defer wg.Done()
		tick := time.NewTicker(probePeriod)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
				if err := probe(); err != nil {
					t.Errorf("probe: %v", err)
					return
				}
			}
		}
	}()
	defer wg.Wait()
	defer close(stop)
	ctx, cancel := context.WithTimeout(context.Background(), fleettest.Timeout)
	defer cancel()
	_, p, err := c.Read(ctx)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	return string(p)
}
