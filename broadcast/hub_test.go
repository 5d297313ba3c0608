package broadcast_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chiws/chiws/broadcast"
	"github.com/chiws/chiws/broadcast/internal/fleettest"
	"github.com/chiws/chiws/internal/wstest"
	"github.com/coder/websocket"
)

// memoryNodes shares one Memory broker among three hubs, as three hubs of
// one process would.
func memoryNodes(t *testing.T) []fleettest.Node {
	b := broadcast.NewMemory()
	t.Cleanup(func() { _ = b.Close() })
	return []fleettest.Node{{Broker: b}, {Broker: b}, {Broker: b}}
}

func TestHubOnMemory(t *testing.T) {
	fleettest.Run(t, memoryNodes)
}

func TestPublishRejectsBadInput(t *testing.T) {
	hub := broadcast.NewHub(broadcast.NewMemory(), broadcast.Options{MaxMessageBytes: 8})
	defer func() { _ = hub.Shutdown(context.Background()) }()
	tests := []struct {
		name  string
		topic string
		typ   websocket.MessageType
		give  []byte
		want  error
	}{
		{"empty topic", "", websocket.MessageText, nil, broadcast.ErrInvalidTopic},
		{"wildcard topic", "room.*", websocket.MessageText, nil, broadcast.ErrInvalidTopic},
		{"space in topic", "a room", websocket.MessageText, nil, broadcast.ErrInvalidTopic},
		{"empty token", "room..a", websocket.MessageText, nil, broadcast.ErrInvalidTopic},
		{"long topic", strings.Repeat("a", broadcast.MaxTopicLen+1), websocket.MessageText, nil, broadcast.ErrInvalidTopic},
		{"bad type", "room", 3, nil, broadcast.ErrInvalidMessage},
		{"text not UTF-8", "room", websocket.MessageText, []byte{0xff}, broadcast.ErrInvalidMessage},
		{"too big", "room", websocket.MessageBinary, make([]byte, 9), broadcast.ErrMessageTooBig},
		{"ok", "room.a:b/c-d_e", websocket.MessageBinary, make([]byte, 8), nil},
	}
	if err := hub.PublishExcept(context.Background(), "room", nil, websocket.MessageText, nil); err == nil {
		t.Error("PublishExcept without a member to leave out did not fail")
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := hub.Publish(context.Background(), tt.topic, tt.typ, tt.give)
			if !errors.Is(err, tt.want) || (tt.want == nil) != (err == nil) {
				t.Fatalf("Publish = %v, want %v", err, tt.want)
			}
		})
	}
}

func TestNewHubPanicsOnBadOptions(t *testing.T) {
	tests := []struct {
		name string
		b    broadcast.Broker
		opts broadcast.Options
		want string
	}{
		{"nil broker", nil, broadcast.Options{}, "nil Broker"},
		{"negative queue", broadcast.NewMemory(), broadcast.Options{QueueMessages: -1}, "QueueMessages"},
		{"negative bytes", broadcast.NewMemory(), broadcast.Options{QueueBytes: -1}, "QueueBytes"},
		{"negative timeout", broadcast.NewMemory(), broadcast.Options{WriteTimeout: -1}, "WriteTimeout"},
		{"message over the queue", broadcast.NewMemory(), broadcast.Options{QueueBytes: 100_000}, "MaxMessageBytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			defer func() {
				r := recover()
				if s, _ := r.(string); !strings.Contains(s, tt.want) {
					t.Fatalf("panic %v, want one naming %s", r, tt.want)
				}
			}()
			broadcast.NewHub(tt.b, tt.opts)
		})
	}
}

// TestMalformedBrokerMessagesAreDropped publishes on the broker payloads
// that no hub would encode: they are counted and dropped.
func TestMalformedBrokerMessagesAreDropped(t *testing.T) {
	b := broadcast.NewMemory()
	defer b.Close()
	nodes := []fleettest.Node{{Broker: b}}
	f := fleettest.Start(t, nodes, broadcast.Options{})
	c := f.Nodes[0].Dial(t, 0, "room")
	c.Read()
	f.Nodes[0].WaitMembers(t, "room", 1)
	ctx := context.Background()
	for _, p := range [][]byte{nil, {1}, {9, 1, 'x'}, {1, 7, 'x'}, {1, 1, 0xff}} {
		if err := b.Publish(ctx, "room", p); err != nil {
			t.Fatal(err)
		}
	}
	hub := f.Nodes[0].Hub
	if err := hub.Publish(ctx, "room", websocket.MessageText, []byte("ok")); err != nil {
		t.Fatal(err)
	}
	if m := c.Next(t); m.Data != "ok" {
		t.Fatalf("got %q, want ok", m.Data)
	}
	if got := hub.Stats().Malformed; got != 5 {
		t.Fatalf("Malformed = %d, want 5", got)
	}
}

// countingBroker counts the hub's broker subscriptions.
type countingBroker struct {
	broadcast.Broker
	subs, unsubs atomic.Int32
}

type countingSub struct {
	broadcast.Subscription
	b *countingBroker
}

func (b *countingBroker) Subscribe(ctx context.Context, topic string, h func([]byte)) (broadcast.Subscription, error) {
	s, err := b.Broker.Subscribe(ctx, topic, h)
	if err != nil {
		return nil, err
	}
	b.subs.Add(1)
	return countingSub{s, b}, nil
}

func (s countingSub) Unsubscribe() error {
	s.b.unsubs.Add(1)
	return s.Subscription.Unsubscribe()
}

// TestOneSubscriptionPerTopic: members share the hub's broker
// subscription, which ends with the last of them.
func TestOneSubscriptionPerTopic(t *testing.T) {
	b := &countingBroker{Broker: broadcast.NewMemory()}
	f := fleettest.Start(t, []fleettest.Node{{Broker: b}}, broadcast.Options{})
	s := f.Nodes[0]
	var cs []*fleettest.Client
	for range 5 {
		cs = append(cs, s.Dial(t, 0, "room"))
	}
	s.WaitMembers(t, "room", 5)
	if got := b.subs.Load(); got != 1 {
		t.Fatalf("%d broker subscriptions for one topic, want 1", got)
	}
	for _, c := range cs {
		_ = c.Conn.Close(websocket.StatusNormalClosure, "")
	}
	s.WaitMembers(t, "room", 0)
	if st := s.Hub.Stats(); st.Topics != 0 || st.Members != 0 {
		t.Fatalf("after every member left: %+v", st)
	}
	if got := b.unsubs.Load(); got != 1 {
		t.Fatalf("%d unsubscriptions, want 1", got)
	}
}

// failingBroker refuses subscriptions.
type failingBroker struct{ broadcast.Broker }

func (failingBroker) Subscribe(context.Context, string, func([]byte)) (broadcast.Subscription, error) {
	return nil, broadcast.ErrBrokerUnavailable
}

func TestJoinFailsWhenTheBrokerDoes(t *testing.T) {
	f := fleettest.Start(t, []fleettest.Node{{Broker: failingBroker{broadcast.NewMemory()}}}, broadcast.Options{})
	c := f.Nodes[0].Dial(t, 0, "room")
	if code, _ := c.Closed(t); code != websocket.StatusTryAgainLater {
		t.Fatalf("closed with %v, want 1013 from the handler after Join failed", code)
	}
	if st := f.Nodes[0].Hub.Stats(); st.Members != 0 || st.Topics != 0 {
		t.Fatalf("after a failed Join: %+v", st)
	}
}

// TestMemberSubscribeUnsubscribe moves a member between topics while it
// is connected.
func TestMemberSubscribeUnsubscribe(t *testing.T) {
	f := fleettest.Start(t, memoryNodes(t)[:1], broadcast.Options{})
	s := f.Nodes[0]
	c := s.Dial(t, 0, "lobby")
	c.Read()
	m := <-s.Joined
	ctx := context.Background()
	publish := func(topic, msg string) {
		t.Helper()
		if err := s.Hub.Publish(ctx, topic, websocket.MessageText, []byte(msg)); err != nil {
			t.Fatal(err)
		}
	}
	if err := m.Subscribe("game.1"); err != nil {
		t.Fatal(err)
	}
	if err := m.Subscribe("game.1"); err != nil {
		t.Fatalf("second Subscribe: %v", err)
	}
	if err := m.Subscribe("game*"); !errors.Is(err, broadcast.ErrInvalidTopic) {
		t.Fatalf("Subscribe(game*) = %v, want ErrInvalidTopic", err)
	}
	publish("game.1", "move")
	if got := c.Next(t).Data; got != "move" {
		t.Fatalf("got %q, want move", got)
	}
	if err := m.Unsubscribe("lobby"); err != nil {
		t.Fatal(err)
	}
	if err := m.Unsubscribe("never-joined"); err != nil {
		t.Fatal(err)
	}
	publish("lobby", "lobby news")
	publish("game.1", "move 2")
	if got := c.Next(t).Data; got != "move 2" {
		t.Fatalf("got %q, want move 2 (lobby news after Unsubscribe?)", got)
	}
	if n := s.Hub.Len("lobby"); n != 0 {
		t.Fatalf("Len(lobby) = %d after Unsubscribe", n)
	}
	_ = c.Conn.Close(websocket.StatusNormalClosure, "")
	s.WaitMembers(t, "game.1", 0)
	if err := m.Subscribe("lobby"); !errors.Is(err, broadcast.ErrMemberLeft) {
		t.Fatalf("Subscribe after leaving = %v, want ErrMemberLeft", err)
	}
}

// TestCloseAllOnBrokerState closes the sockets with 1013, as an
// application does when its broker goes down.
func TestCloseAll(t *testing.T) {
	f := fleettest.Start(t, memoryNodes(t)[:1], broadcast.Options{})
	s := f.Nodes[0]
	c := s.Dial(t, 0, "room")
	c.Read()
	s.WaitMembers(t, "room", 1)
	s.Hub.CloseAll(websocket.StatusTryAgainLater, "broker unavailable")
	if code, reason := c.Closed(t); code != websocket.StatusTryAgainLater || reason != "broker unavailable" {
		t.Fatalf("closed with %v %q", code, reason)
	}
	s.WaitMembers(t, "room", 0)
}

// TestShutdownDeadline: a member that never answers the close handshake
// does not hold Shutdown past its context.
func TestShutdownDeadline(t *testing.T) {
	f := fleettest.Start(t, memoryNodes(t)[:1], broadcast.Options{})
	s := f.Nodes[0]
	// Never reads until after Shutdown: no close frame comes back in time.
	c := s.Dial(t, 0, "room")
	s.WaitMembers(t, "room", 1)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	if err := s.Hub.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Shutdown = %v, want DeadlineExceeded", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("Shutdown took %v past its deadline", d)
	}
	if code, _ := c.Closed(t); code != websocket.StatusGoingAway {
		t.Fatalf("closed with %v, want 1001", code)
	}
	ctx, cancel = context.WithTimeout(context.Background(), fleettest.Timeout)
	defer cancel()
	if err := s.Hub.Shutdown(ctx); err != nil {
		t.Fatalf("second Shutdown = %v", err)
	}
}

// TestDeliveredCounts: Stats().Delivered counts each message once per
// member it was queued for.
func TestDeliveredCounts(t *testing.T) {
	f := fleettest.Start(t, memoryNodes(t)[:1], broadcast.Options{})
	s := f.Nodes[0]
	var clients []*fleettest.Client
	for range 3 {
		c := s.Dial(t, 0, "lobby")
		c.Read()
		clients = append(clients, c)
	}
	s.WaitMembers(t, "lobby", 3)
	for _, msg := range []string{"one", "two"} {
		if err := s.Hub.Publish(context.Background(), "lobby", websocket.MessageText, []byte(msg)); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range clients {
		for _, want := range []string{"one", "two"} {
			if got := c.Next(t).Data; got != want {
				t.Fatalf("got %q, want %q", got, want)
			}
		}
	}
	// Counted after the queueing, which the clients may outrun.
	wstest.WaitFor(t, fleettest.Timeout, "Delivered to reach 6", func() bool { return s.Hub.Stats().Delivered == 6 })
	if st := s.Hub.Stats(); st.Published != 2 || st.Received != 2 {
		t.Fatalf("Published %d, Received %d; want 2 and 2 (once per message, not per member)", st.Published, st.Received)
	}
}

// TestOversizedBrokerMessage: a broker message larger than QueueBytes fits
// no member's queue. It is dropped and counted once, and no member is
// closed for it.
func TestOversizedBrokerMessage(t *testing.T) {
	b := broadcast.NewMemory()
	defer b.Close()
	f := fleettest.Start(t, []fleettest.Node{{Broker: b}}, broadcast.Options{QueueBytes: 1024, MaxMessageBytes: 512})
	s := f.Nodes[0]
	var clients []*fleettest.Client
	for range 3 {
		c := s.Dial(t, 0, "room")
		c.Read()
		clients = append(clients, c)
	}
	s.WaitMembers(t, "room", 3)
	big, err := broadcast.AppendEnvelope(nil, broadcast.Envelope{Type: websocket.MessageBinary, Payload: make([]byte, 2000)})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := b.Publish(ctx, "room", big); err != nil { // from a hub with a larger MaxMessageBytes, say
		t.Fatal(err)
	}
	if err := s.Hub.Publish(ctx, "room", websocket.MessageText, []byte("after")); err != nil {
		t.Fatal(err)
	}
	for i, c := range clients {
		if got := c.Next(t).Data; got != "after" {
			t.Fatalf("client %d got %q, want after", i, got)
		}
	}
	if st := s.Hub.Stats(); st.Oversized != 1 || st.Slow != 0 || st.Members != 3 {
		t.Fatalf("Oversized %d, Slow %d, Members %d; want 1, 0, 3", st.Oversized, st.Slow, st.Members)
	}
}

// monitored is a Memory broker whose Health the test sets.
type monitored struct {
	broadcast.Broker
	mu     sync.Mutex
	health broadcast.Health
	notify func(broadcast.Health)
}

func (b *monitored) Health() broadcast.Health {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.health
}

func (b *monitored) NotifyHealth(f func(broadcast.Health)) func() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.notify = f
	return func() {
		b.mu.Lock()
		defer b.mu.Unlock()
		b.notify = nil
	}
}

// PartOf puts topic a in partition 0, every other in partition 1.
func (b *monitored) PartOf(topic string) string {
	if topic == "a" {
		return "partition 0"
	}
	return "partition 1"
}

// set gives the parts' states: partition 0 first, then partition 1 (up
// when not given).
func (b *monitored) set(up ...bool) {
	up = append(up, true)
	b.setParts(broadcast.PartHealth{Name: "partition 0", Kind: broadcast.PartTopics, Up: up[0]},
		broadcast.PartHealth{Name: "partition 1", Kind: broadcast.PartTopics, Up: up[1]})
}

// setParts notifies with its lock held, as the Monitor contract allows:
// a callback that called Health would deadlock.
func (b *monitored) setParts(parts ...broadcast.PartHealth) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.health = broadcast.HealthOf(parts)
	if b.notify != nil {
		b.notify(b.health)
	}
}

// TestBrokerStateFromTheStart: a hub on a broker that is down from the
// start says so; OnBrokerState gets the hub itself, so the documented
// CloseAll needs no variable set after NewHub; it reports going up, going
// down, and another part going down while down, nothing else.
func TestBrokerStateFromTheStart(t *testing.T) {
	b := &monitored{Broker: broadcast.NewMemory()}
	b.set(false)
	type call struct {
		h  *broadcast.Hub
		up bool
	}
	calls := make(chan call, 8)
	hub := broadcast.NewHub(b, broadcast.Options{OnBrokerState: func(h *broadcast.Hub, up bool) {
		calls <- call{h, up}
		if !up && h.Stats().Broker.Up { // the broker's lock is held: Stats must not call it
			t.Error("Stats().Broker up in OnBrokerState(false)")
		}
		if !up {
			h.CloseCutOff(websocket.StatusTryAgainLater, "broker unavailable")
		}
	}})
	defer func() { _ = hub.Shutdown(context.Background()) }()
	if st := hub.Stats(); st.Broker.Up || len(st.Broker.Down()) != 1 {
		t.Fatalf("Stats().Broker = %+v, want down from the start", st.Broker)
	}
	b.set(true)
	b.set(true) // not an edge
	if c := <-calls; c.h != hub || !c.up {
		t.Fatalf("OnBrokerState(%p, %v), want (%p, true)", c.h, c.up, hub)
	}
	b.set(false)
	if c := <-calls; c.h != hub || c.up {
		t.Fatalf("OnBrokerState(%p, %v), want (%p, false)", c.h, c.up, hub)
	}
	b.set(false, false) // another part down: worse
	if c := <-calls; c.up {
		t.Fatal("OnBrokerState(true) when a second part went down")
	}
	b.set(true, false) // better, still down: not reported
	b.set(true, true)
	if c := <-calls; !c.up {
		t.Fatal("OnBrokerState(false) when every part came back")
	}
	select {
	case c := <-calls:
		t.Fatalf("an extra OnBrokerState(%v)", c.up)
	default:
	}
}

// TestJoinDuringAFanOut: a fan-out holds its topic only. A Join of that
// topic waits for it without holding the hub, so a Join, a Publish and a
// delivery on another topic, and Stats, go on meanwhile.
func TestJoinDuringAFanOut(t *testing.T) {
	f := fleettest.Start(t, memoryNodes(t)[:1], broadcast.Options{})
	s := f.Nodes[0]
	a := s.Dial(t, 0, "a")
	a.Read()
	m := <-s.Joined
	hold := broadcast.HoldQueue(m) // the fan-out to topic a stops at m
	var once sync.Once
	release := func() { once.Do(hold) }
	defer release() // on failure too: the cleanup's Shutdown needs it
	published := make(chan error, 1)
	go func() { // owned by the test: it ends once release runs, and the test waits for it
		published <- s.Hub.Publish(context.Background(), "a", websocket.MessageText, []byte("to a"))
	}()
	wstest.WaitFor(t, fleettest.Timeout, "the fan-out to start", func() bool { return s.Hub.Stats().Received == 1 })
	a2 := s.Dial(t, 0, "a") // its Join waits for a's fan-out
	a2.Read()
	wstest.WaitFor(t, fleettest.Timeout, "the second Join of a to wait for the fan-out", broadcast.WaitingToAdd)
	stats := make(chan broadcast.Stats, 1)
	go func() { stats <- s.Hub.Stats() }() // owned by the test: ends at the latest with release
	select {
	case <-stats:
	case <-time.After(fleettest.Timeout):
		t.Fatal("Stats waits for a's fan-out: the waiting Join holds the hub")
	}
	b := s.Dial(t, 0, "b") // Join of another topic
	b.Read()
	s.WaitMembers(t, "b", 1)
	if err := s.Hub.Publish(context.Background(), "b", websocket.MessageText, []byte("to b")); err != nil {
		t.Fatal(err)
	}
	if got := b.Next(t).Data; got != "to b" {
		t.Fatalf("b got %q", got)
	}
	select {
	case err := <-published:
		t.Fatalf("the fan-out to a ended (%v) while it was held", err)
	default:
	}
	release()
	if err := <-published; err != nil {
		t.Fatal(err)
	}
	if got := a.Next(t).Data; got != "to a" {
		t.Fatalf("a got %q", got)
	}
	s.WaitMembers(t, "a", 2) // the second Join of a went through
}

// TestCloseCutOff: CloseCutOff closes the members whose messages are
// being lost, and only them: nobody for a peer down, a topic's members
// for its partition down, everyone for the connection down.
func TestCloseCutOff(t *testing.T) {
	b := &monitored{Broker: broadcast.NewMemory()}
	parts := func(down ...string) []broadcast.PartHealth {
		var ps []broadcast.PartHealth
		for _, p := range []broadcast.PartHealth{
			{Name: "connection", Kind: broadcast.PartAll},
			{Name: "partition 0", Kind: broadcast.PartTopics},
			{Name: "partition 1", Kind: broadcast.PartTopics},
			{Name: "peer web-2", Kind: broadcast.PartPeer},
		} {
			p.Up = !slices.Contains(down, p.Name)
			ps = append(ps, p)
		}
		return ps
	}
	b.setParts(parts()...)
	f := fleettest.Start(t, []fleettest.Node{{Broker: b}}, broadcast.Options{})
	s := f.Nodes[0]
	ca, cb := s.Dial(t, 0, "a"), s.Dial(t, 0, "b")
	ca.Read()
	cb.Read()
	s.WaitMembers(t, "a", 1)
	s.WaitMembers(t, "b", 1)
	closeCutOff := func(down ...string) {
		b.setParts(parts(down...)...)
		s.Hub.CloseCutOff(websocket.StatusTryAgainLater, "broker unavailable")
	}
	receive := func(c *fleettest.Client, topic string) {
		t.Helper()
		if err := s.Hub.Publish(context.Background(), topic, websocket.MessageText, []byte("to "+topic)); err != nil {
			t.Fatal(err)
		}
		if got := c.Next(t).Data; got != "to "+topic {
			t.Fatalf("got %q", got)
		}
	}
	closeCutOff("peer web-2")
	receive(ca, "a") // both still members
	receive(cb, "b")
	closeCutOff("peer web-2", "partition 0")
	if code, _ := ca.Closed(t); code != websocket.StatusTryAgainLater {
		t.Fatalf("a's member closed with %v, want 1013: its partition is down", code)
	}
	receive(cb, "b")
	closeCutOff("connection")
	if code, _ := cb.Closed(t); code != websocket.StatusTryAgainLater {
		t.Fatalf("b's member closed with %v, want 1013: the connection is down", code)
	}
}

// racing is a broker whose state changes while NewHub reads it a second
// time: Health returns the old state after the change was notified.
type racing struct {
	broadcast.Broker
	calls  int
	notify func(broadcast.Health)
}

func (b *racing) PartOf(string) string { return "" }

func (b *racing) NotifyHealth(f func(broadcast.Health)) func() {
	b.notify = f
	return func() {}
}

func (b *racing) Health() broadcast.Health {
	up := broadcast.HealthOf([]broadcast.PartHealth{{Name: "connection", Up: true}})
	if b.calls++; b.calls == 2 && b.notify != nil {
		b.notify(broadcast.HealthOf([]broadcast.PartHealth{{Name: "connection"}})) // down, notified
	}
	return up // read before the change
}

// TestHealthReadDoesNotOverwriteANotification: NewHub's second read of the
// Health is older than a notification that arrived meanwhile, and must not
// replace it.
func TestHealthReadDoesNotOverwriteANotification(t *testing.T) {
	hub := broadcast.NewHub(&racing{Broker: broadcast.NewMemory()}, broadcast.Options{})
	defer func() { _ = hub.Shutdown(context.Background()) }()
	if st := hub.Stats(); st.Broker.Up {
		t.Fatalf("Stats().Broker = %+v, want the notified down", st.Broker)
	}
}

// silent is a broker whose state changes between NewHub's two reads
// without a notification (it changed before NotifyHealth registered).
type silent struct {
	broadcast.Broker
	calls int
}

func (b *silent) PartOf(string) string                       { return "" }
func (b *silent) NotifyHealth(func(broadcast.Health)) func() { return func() {} }
func (b *silent) Health() broadcast.Health {
	b.calls++
	return broadcast.HealthOf([]broadcast.PartHealth{{Name: "connection", Up: b.calls == 1}})
}

// TestHealthChangeBeforeRegistration: a change between NewHub's first read
// and its registration, which no notification reports, is taken from the
// second read.
func TestHealthChangeBeforeRegistration(t *testing.T) {
	hub := broadcast.NewHub(&silent{Broker: broadcast.NewMemory()}, broadcast.Options{})
	defer func() { _ = hub.Shutdown(context.Background()) }()
	if st := hub.Stats(); st.Broker.Up {
		t.Fatalf("Stats().Broker = %+v, want the down of the second read", st.Broker)
	}
}
