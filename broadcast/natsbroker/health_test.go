package natsbroker_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chiws/chiws/broadcast"
	"github.com/chiws/chiws/broadcast/internal/fleettest"
	"github.com/chiws/chiws/broadcast/natsbroker"
	"github.com/chiws/chiws/internal/wstest"
	"github.com/nats-io/nats.go"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

// TestHealthAtStart: Health is known when Connect returns: up with the
// server up, and down, naming the connection, with the server down (a
// nats.RetryOnFailedConnect connection); then up once the server starts.
func TestHealthAtStart(t *testing.T) {
	e := startServer(t, natsbroker.EmbeddedOptions{})
	up := connectTo(t, e, fast("up"))
	h := up.Health()
	if !h.Up || len(h.Parts) != 3 || h.Parts[0].Name != natsbroker.PartConnection || h.Parts[1].Name != natsbroker.PartProbe ||
		h.Parts[2].Name != natsbroker.PartSlowConsumer {
		t.Fatalf("health right after Connect: %s, want up with the connection, the probe and the slow consumers", describe(h))
	}

	// A client port where nothing listens yet.
	gone, err := natsbroker.StartEmbedded(natsbroker.EmbeddedOptions{ClientAddr: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	addr, url := gone.Server().Addr().String(), gone.ClientURL()
	gone.Shutdown()
	o := fast("late")
	o.NATS = []nats.Option{nats.RetryOnFailedConnect(true)}
	b, err := natsbroker.Connect(url, o)
	if err != nil {
		t.Fatalf("Connect with RetryOnFailedConnect: %v", err)
	}
	defer b.Close()
	h = b.Health()
	conn, _ := part(h, natsbroker.PartConnection)
	probe, _ := part(h, natsbroker.PartProbe)
	if h.Up || conn.Up || probe.Up || !errors.Is(conn.Err, broadcast.ErrBrokerUnavailable) {
		t.Fatalf("health of a broker whose server is down: %s, want the connection down with ErrBrokerUnavailable", describe(h))
	}
	if err := b.Publish(context.Background(), "room", []byte("x")); !errors.Is(err, broadcast.ErrBrokerUnavailable) {
		t.Fatalf("Publish while not connected: %v, want ErrBrokerUnavailable", err)
	}
	// A hub on it is told when the broker comes up.
	states := make(chan bool, 4)
	hub := broadcast.NewHub(b, broadcast.Options{OnBrokerState: func(_ *broadcast.Hub, up bool) { states <- up }})
	defer hub.Shutdown(context.Background())

	e2 := startServer(t, natsbroker.EmbeddedOptions{ClientAddr: addr})
	_ = e2
	waitHealth(t, b, "up once the server started", func(h broadcast.Health) bool { return h.Up })
	select {
	case up := <-states:
		if !up {
			t.Fatal("OnBrokerState(false) on a broker that was already down")
		}
	case <-time.After(fleettest.Timeout):
		t.Fatal("OnBrokerState(true) never called")
	}
}

// TestRouteCut: the route between two servers is cut while both stay up
// (a proxy on the route stops forwarding, holding the bytes). NATS notices
// nothing for a minute (route pings), and Publish goes on returning nil.
// Both brokers report the other down (a "peer" part naming it) within
// HealthTimeout+HealthInterval, their connection and probe still up; when
// the cut heals, both are up again and messages flow.
func TestRouteCut(t *testing.T) {
	eA := startServer(t, natsbroker.EmbeddedOptions{Name: "A", ClusterAddr: "127.0.0.1:0"})
	px := newProxy(t, strings.TrimPrefix(eA.ClusterURL(), "nats://"))
	eB := startServer(t, natsbroker.EmbeddedOptions{Name: "B", ClusterAddr: "127.0.0.1:0", Routes: []string{natsURL(px)}})
	waitRoutes(t, 1, eA, eB)
	a := connectTo(t, eA, fast("alpha"))
	b := connectTo(t, eB, fast("beta"))
	waitHealth(t, a, "alpha sees beta", seesUp(b))
	waitHealth(t, b, "beta sees alpha", seesUp(a))

	cut := time.Now()
	px.Pause(wstest.Both)
	hA, hB, dA, dB := bothSeeDown(t, a, b, cut)
	t.Logf("route cut seen after %v (alpha) and %v (beta); bound %v", dA.Round(time.Millisecond), dB.Round(time.Millisecond), testTimeout+testInterval)
	for _, c := range []struct {
		h    broadcast.Health
		peer *natsbroker.Broker
		name string
		d    time.Duration
	}{{hA, b, "beta", dA}, {hB, a, "alpha", dB}} {
		p, _ := part(c.h, c.peer.ID())
		if want := "peer " + c.name + "/" + c.peer.ID(); p.Name != want || p.Err == nil {
			t.Errorf("down part %q (%v), want %q with a reason", p.Name, p.Err, want)
		}
		if got := c.h.Down(); !slices.Equal(got, []string{p.Name}) {
			t.Errorf("down parts %v, want only the peer: connection and probe work", got)
		}
		// The bound plus room for a loaded machine.
		if c.d > testTimeout+testInterval+time.Second {
			t.Errorf("cut seen after %v, bound %v", c.d, testTimeout+testInterval)
		}
	}
	// What the brokers report is what NATS hides: Publish still succeeds.
	if err := b.Publish(context.Background(), "room", []byte("into the cut")); err != nil {
		t.Fatalf("Publish during the cut: %v", err)
	}

	healed := time.Now()
	px.Resume(wstest.Both)
	waitHealth(t, a, "alpha sees beta again", seesUp(b))
	waitHealth(t, b, "beta sees alpha again", seesUp(a))
	t.Logf("up again %v after the cut healed", time.Since(healed).Round(time.Millisecond))
	expectDelivery(t, a, b, "after.cut")
}

// TestOneWayCut: the route between two servers passes traffic in one
// direction only (the proxy holds what beta's server sends to alpha's).
// Alpha stops hearing beta; beta still hears alpha, whose heartbeats say
// that beta's no longer arrive. Both report the other down, each saying
// which direction failed, their connection and probe still up; both are
// up again when the cut heals.
func TestOneWayCut(t *testing.T) {
	eA := startServer(t, natsbroker.EmbeddedOptions{Name: "A", ClusterAddr: "127.0.0.1:0"})
	px := newProxy(t, strings.TrimPrefix(eA.ClusterURL(), "nats://"))
	eB := startServer(t, natsbroker.EmbeddedOptions{Name: "B", ClusterAddr: "127.0.0.1:0", Routes: []string{natsURL(px)}})
	waitRoutes(t, 1, eA, eB)
	a := connectTo(t, eA, fast("alpha"))
	b := connectTo(t, eB, fast("beta"))
	waitHealth(t, a, "alpha sees beta", seesUp(b))
	waitHealth(t, b, "beta sees alpha", seesUp(a))

	cut := time.Now()
	px.Pause(wstest.Up) // beta's server to alpha's
	hA, hB, dA, dB := bothSeeDown(t, a, b, cut)
	t.Logf("one-way cut seen after %v (alpha, which no longer hears beta) and %v (beta, which is no longer heard)",
		dA.Round(time.Millisecond), dB.Round(time.Millisecond))
	for _, c := range []struct {
		h    broadcast.Health
		peer *natsbroker.Broker
		why  string
	}{{hA, b, "no heartbeat from it"}, {hB, a, "from us to it is cut, one way"}} {
		p, _ := part(c.h, c.peer.ID())
		if p.Err == nil || !strings.Contains(p.Err.Error(), c.why) {
			t.Errorf("%s: %v, want a reason with %q", p.Name, p.Err, c.why)
		}
		if got := c.h.Down(); !slices.Equal(got, []string{p.Name}) {
			t.Errorf("down parts %v, want only the peer: connection and probe work", got)
		}
	}
	px.Resume(wstest.Both)
	waitHealth(t, a, "alpha sees beta again", seesUp(b))
	waitHealth(t, b, "beta sees alpha again", seesUp(a))
	expectDelivery(t, a, b, "after.cut")
	expectDelivery(t, b, a, "after.cut.back")
}

// expectDelivery subscribes on sub and checks that a message published
// on pub arrives.
func expectDelivery(t *testing.T, sub, pub *natsbroker.Broker, topic string) {
	t.Helper()
	got := make(chan string, 16)
	ctx, cancel := context.WithTimeout(context.Background(), fleettest.Timeout)
	defer cancel()
	s, err := sub.Subscribe(ctx, topic, func(p []byte) {
		select {
		case got <- string(p):
		default:
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Unsubscribe()
	if err := pub.Publish(ctx, topic, []byte("hello")); err != nil {
		t.Fatal(err)
	}
	select {
	case m := <-got:
		if m != "hello" {
			t.Fatalf("got %q, want hello", m)
		}
	case <-ctx.Done():
		t.Fatal("message did not arrive")
	}
}

// TestGracefulClose: an instance that closes its broker says goodbye; the
// other removes it from Health without ever reporting it down, and its
// hub's OnBrokerState is not called.
func TestGracefulClose(t *testing.T) {
	es := startCluster(t, 2, natsbroker.EmbeddedOptions{})
	// Slow timeouts: a loaded machine must not make a peer look down.
	o := natsbroker.Options{Name: "alpha", HealthInterval: testInterval, HealthTimeout: 10 * time.Second}
	a := connectTo(t, es[0], o)
	o.Name = "beta"
	b := connectTo(t, es[1], o)
	waitHealth(t, a, "alpha sees beta", seesUp(b))

	var mu sync.Mutex
	var seen []broadcast.Health
	stop := a.NotifyHealth(func(h broadcast.Health) {
		mu.Lock()
		seen = append(seen, h)
		mu.Unlock()
	})
	defer stop()
	states := make(chan bool, 4)
	hub := broadcast.NewHub(a, broadcast.Options{OnBrokerState: func(_ *broadcast.Hub, up bool) { states <- up }})
	defer hub.Shutdown(context.Background())

	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	h := waitHealth(t, a, "beta removed", func(h broadcast.Health) bool { return peerCount(h) == 0 })
	if !h.Up {
		t.Fatalf("after beta's goodbye: %s", describe(h))
	}
	// The removal was notified (same goroutine order as the changes), and
	// no notification was down. A removed peer cannot go down later.
	waitNotified(t, &mu, &seen, 1)
	mu.Lock()
	for _, h := range seen {
		if !h.Up {
			t.Errorf("notified down: %s", describe(h))
		}
	}
	mu.Unlock()
	select {
	case up := <-states:
		t.Fatalf("OnBrokerState(%v) on a graceful close", up)
	default:
	}
}

// waitNotified waits until *seen has n entries.
func waitNotified(t *testing.T, mu *sync.Mutex, seen *[]broadcast.Health, n int) {
	t.Helper()
	deadline := time.Now().Add(fleettest.Timeout)
	for {
		mu.Lock()
		l := len(*seen)
		mu.Unlock()
		if l >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d notifications, want %d", l, n)
		}
		waitTick()
	}
}

// waitTick is a short pause between two observations of a state that
// has no channel.
func waitTick() {
	tick := time.NewTimer(5 * time.Millisecond) // polling, not synchronisation
	<-tick.C
}

// TestPeerCrash: an instance whose connection ends without a goodbye (as
// when its process is killed) is down on the other within the bound,
// since a crash cannot be told from a partition, and is forgotten after
// ForgetAfter.
func TestPeerCrash(t *testing.T) {
	e := startServer(t, natsbroker.EmbeddedOptions{})
	o := fast("alpha")
	o.ForgetAfter = 2 * time.Second
	a := connectTo(t, e, o)
	b := connectTo(t, e, fast("beta"))
	waitHealth(t, a, "alpha sees beta", seesUp(b))

	crash := time.Now()
	b.Conn().Close() // no goodbye
	waitHealth(t, a, "beta down", seesDown(b))
	t.Logf("crash seen after %v", time.Since(crash).Round(time.Millisecond))
	h := waitHealth(t, a, "beta forgotten", func(h broadcast.Health) bool { return peerCount(h) == 0 })
	// ForgetAfter counts from the last heartbeat heard, which left up to
	// an interval before the crash.
	if d := time.Since(crash); !h.Up || d < o.ForgetAfter-2*testInterval {
		t.Fatalf("after %v: %s, want up after ForgetAfter (%v) from the last heartbeat", d, describe(h), o.ForgetAfter)
	}
}

// TestProbe: the path to the server black-holes traffic while the TCP
// connection stays open (a proxy that stops forwarding). nats.go notices
// nothing for minutes; the probe part is down within the bound while the
// connection part stays up, and up again when traffic flows.
func TestProbe(t *testing.T) {
	e := startServer(t, natsbroker.EmbeddedOptions{ClientAddr: "127.0.0.1:0"})
	px := newProxy(t, e.Server().Addr().String())
	b, err := natsbroker.Connect(natsURL(px), fast("alpha"))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if h := b.Health(); !h.Up {
		t.Fatalf("at start: %s", describe(h))
	}
	cut := time.Now()
	px.Pause(wstest.Both)
	h := waitHealth(t, b, "probe down", func(h broadcast.Health) bool { return !h.Up })
	t.Logf("black hole seen after %v", time.Since(cut).Round(time.Millisecond))
	if got := h.Down(); !slices.Equal(got, []string{natsbroker.PartProbe}) {
		t.Fatalf("down parts %v, want only the probe: %s", got, describe(h))
	}
	px.Resume(wstest.Both)
	waitHealth(t, b, "up again", func(h broadcast.Health) bool { return h.Up })
}

// TestNotifyHealthStop: a stopped function is not called again; others
// are, in order.
func TestNotifyHealthStop(t *testing.T) {
	e := startServer(t, natsbroker.EmbeddedOptions{})
	a := connectTo(t, e, fast("alpha"))
	stopped := false
	var mu sync.Mutex
	stop := a.NotifyHealth(func(broadcast.Health) {
		mu.Lock()
		defer mu.Unlock()
		if stopped {
			t.Error("called after stop")
		}
	})
	mu.Lock()
	stop()
	stopped = true
	mu.Unlock()
	var seen []broadcast.Health
	defer a.NotifyHealth(func(h broadcast.Health) {
		mu.Lock()
		seen = append(seen, h)
		mu.Unlock()
	})()
	b := connectTo(t, e, fast("beta"))
	waitHealth(t, a, "alpha sees beta", seesUp(b))
	_ = b.Close()
	waitHealth(t, a, "beta gone", func(h broadcast.Health) bool { return peerCount(h) == 0 })
	waitNotified(t, &mu, &seen, 2)
	mu.Lock()
	defer mu.Unlock()
	if peerCount(seen[0]) != 1 || peerCount(seen[len(seen)-1]) != 0 {
		t.Fatalf("notifications out of order: first has %d peers, last %d", peerCount(seen[0]), peerCount(seen[len(seen)-1]))
	}
}

// TestPeerRestart: an instance killed without a goodbye and started again
// in place (same Name, new random ID) replaces its old ID at once: the
// old part disappears and Health is up as soon as the new instance is
// heard, not ForgetAfter later. The replacement is logged once, at Info.
func TestPeerRestart(t *testing.T) {
	e := startServer(t, natsbroker.EmbeddedOptions{})
	core, logs := observer.New(zap.InfoLevel)
	o := fast("alpha")
	o.ForgetAfter = time.Minute
	o.Logger = zap.New(core)
	a := connectTo(t, e, o)
	old := connectTo(t, e, fast("beta"))
	waitHealth(t, a, "alpha sees beta", seesUp(old))

	crash := time.Now()
	old.Conn().Close() // killed: no goodbye
	waitHealth(t, a, "beta down", seesDown(old))

	restarted := connectTo(t, e, fast("beta"))
	h := waitHealth(t, a, "the new beta up, the old one gone", func(h broadcast.Health) bool {
		_, stale := part(h, old.ID())
		return seesUp(restarted)(h) && !stale
	})
	if d := time.Since(crash); peerCount(h) != 1 || d > o.ForgetAfter/2 {
		t.Fatalf("after %v: %s, want up with the new beta alone, well before ForgetAfter (%v)", d, describe(h), o.ForgetAfter)
	}
	t.Logf("restart replaced the old ID %v after the crash", time.Since(crash).Round(time.Millisecond))
	if n := logs.FilterMessage("nats broker: peer restarted").Len(); n != 1 {
		t.Fatalf("%d logs of the restart, want 1", n)
	}
}

// TestSharedName: two live instances that share a Name (a copied
// configuration) are not taken for a restart for long: the one dropped is
// heard again, both stay in Health, and it is logged once.
func TestSharedName(t *testing.T) {
	e := startServer(t, natsbroker.EmbeddedOptions{})
	core, logs := observer.New(zap.InfoLevel)
	o := fast("alpha")
	o.Logger = zap.New(core)
	a := connectTo(t, e, o)
	b1 := connectTo(t, e, fast("beta"))
	waitHealth(t, a, "alpha sees the first beta", seesUp(b1))
	b2 := connectTo(t, e, fast("beta"))
	waitHealth(t, a, "alpha sees both betas", seesUp(b1, b2))
	if n := logs.FilterMessageSnippet("share a Name").Len(); n != 1 {
		t.Fatalf("%d logs of the shared name, want 1", n)
	}
	// From now on the two are separate peers: one that stops without a
	// goodbye is reported down, not replaced by the other.
	b1.Conn().Close()
	h := waitHealth(t, a, "the first beta down", seesDown(b1))
	if p, _ := part(h, b2.ID()); !p.Up {
		t.Fatalf("%s, want the second beta up", describe(h))
	}
	if n := logs.FilterMessage("nats broker: peer restarted").Len(); n != 1 {
		t.Fatalf("%d logs of a restart, want 1 (the second beta's arrival)", n)
	}
}

// TestHeardList: the list of peers heard that each heartbeat carries.
// Peers of a version without it are never blamed for a one-way cut; a
// peer whose complete list never names this instance is (after the grace
// of one HealthTimeout); a peer whose list was cut short for room is not.
// A broker's own list holds at most MaxHeardPeers, the lowest IDs, and
// says it is partial.
func TestHeardList(t *testing.T) {
	e := startServer(t, natsbroker.EmbeddedOptions{})
	a := connectTo(t, e, fast("alpha"))
	raw, err := nats.Connect("", nats.InProcessServer(e.Server()))
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	hb := natsbroker.ControlPrefix + natsbroker.DefaultSubjectPrefix + "hb"
	const legacy, mute, crowded = "0legacy", "0mute", "0crowded"
	beats := map[string]string{
		legacy:  `{"id":"0legacy","name":"legacy"}`,
		mute:    `{"id":"0mute","heard":{"someone":5}}`,
		crowded: `{"id":"0crowded","heard":{},"partial":true}`,
	}
	// The fake peers beat for three HealthTimeouts: a bounded loop.
	tick := time.NewTicker(testInterval)
	defer tick.Stop()
	for range 3 * testTimeout / testInterval {
		for _, m := range beats {
			if err := raw.Publish(hb, []byte(m)); err != nil {
				t.Fatal(err)
			}
		}
		<-tick.C
	}
	h := a.Health()
	for _, id := range []string{legacy, crowded} {
		if p, ok := part(h, id); !ok || !p.Up {
			t.Errorf("%s: %s, want it up", id, describe(h))
		}
	}
	if p, ok := part(h, mute); !ok || p.Up || !strings.Contains(p.Err.Error(), "one way") {
		t.Errorf("%s: %s, want it down for a one-way cut", mute, describe(h))
	}

	// Many peers: alpha's heartbeat names the first MaxHeardPeers.
	var ids []string
	for i := range natsbroker.MaxHeardPeers + 40 {
		id := fmt.Sprintf("1peer%04d", i)
		ids = append(ids, id)
		if err := raw.Publish(hb, []byte(`{"id":"`+id+`"}`)); err != nil {
			t.Fatal(err)
		}
	}
	waitHealth(t, a, "alpha knows them all", func(h broadcast.Health) bool { return peerCount(h) == len(ids)+len(beats) })
	own, err := raw.SubscribeSync(hb)
	if err != nil {
		t.Fatal(err)
	}
	for {
		m, err := own.NextMsg(fleettest.Timeout)
		if err != nil {
			t.Fatal(err)
		}
		var got struct {
			ID      string           `json:"id"`
			Heard   map[string]int64 `json:"heard"`
			Partial bool             `json:"partial"`
		}
		if json.Unmarshal(m.Data, &got) != nil || got.ID != a.ID() || got.Heard == nil {
			continue // another's, or the first probe
		}
		want := append([]string{crowded, legacy, mute}, ids...)[:natsbroker.MaxHeardPeers]
		if !got.Partial || len(got.Heard) != len(want) {
			t.Fatalf("alpha's heartbeat: %d peers heard, partial %v; want %d, partial", len(got.Heard), got.Partial, len(want))
		}
		for _, id := range want {
			if _, ok := got.Heard[id]; !ok {
				t.Fatalf("alpha's heartbeat lacks %s, one of the lowest IDs", id)
			}
		}
		return
	}
}

// TestSlowConsumer: a subscription whose handler blocks, with small
// pending limits, overflows them: nats.go drops messages and reports it
// to its error handler. The broker's part PartSlowConsumer is down, naming
// the subject, and an ErrorHandler given in Options.NATS is still called;
// once the handler is released and nothing has been dropped for
// HealthTimeout, the part is up again.
func TestSlowConsumer(t *testing.T) {
	e := startServer(t, natsbroker.EmbeddedOptions{})
	userErrs := make(chan error, 1)
	o := natsbroker.WithPendingLimits(fast("alpha"), 4, 1<<20)
	o.NATS = []nats.Option{nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
		select {
		case userErrs <- err:
		default:
		}
	})}
	a := connectTo(t, e, o)
	release := make(chan struct{})
	var once sync.Once
	unblock := func() { once.Do(func() { close(release) }) }
	t.Cleanup(unblock) // before the broker closes (cleanups run in reverse)
	got := make(chan string, 64)
	ctx, cancel := context.WithTimeout(context.Background(), fleettest.Timeout)
	defer cancel()
	if _, err := a.Subscribe(ctx, "busy", func(p []byte) {
		<-release
		got <- string(p)
	}); err != nil {
		t.Fatal(err)
	}

	start := time.Now()
	for i := range 20 {
		if err := a.Publish(ctx, "busy", []byte(fmt.Sprint(i))); err != nil {
			t.Fatal(err)
		}
	}
	h := waitHealth(t, a, "slow consumer reported", func(h broadcast.Health) bool { return !h.Up })
	p, _ := part(h, natsbroker.PartSlowConsumer)
	if got := h.Down(); !slices.Equal(got, []string{natsbroker.PartSlowConsumer}) ||
		!strings.Contains(p.Err.Error(), natsbroker.DefaultSubjectPrefix+"busy") {
		t.Fatalf("%s, want only the slow consumers down, naming the subject", describe(h))
	}
	select {
	case err := <-userErrs:
		if !errors.Is(err, nats.ErrSlowConsumer) {
			t.Fatalf("the application's error handler got %v, want ErrSlowConsumer", err)
		}
	case <-ctx.Done():
		t.Fatal("the application's error handler was not called")
	}

	unblock()
	waitHealth(t, a, "slow consumer over", func(h broadcast.Health) bool { return h.Up })
	if d := time.Since(start); d < testTimeout {
		t.Fatalf("up again %v after the drops, want no drop for HealthTimeout (%v) first", d, testTimeout)
	}
	// The handler had what the limits held; the next message arrives.
	if err := a.Publish(ctx, "busy", []byte("after")); err != nil {
		t.Fatal(err)
	}
	for {
		select {
		case m := <-got:
			if m == "after" {
				return
			}
		case <-ctx.Done():
			t.Fatal("no message after the slow consumer")
		}
	}
}
