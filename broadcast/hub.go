package broadcast

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/chiws/chiws"
	"github.com/coder/websocket"
	"go.uber.org/zap"
)

// Defaults for Options.
const (
	DefaultQueueMessages    = 256
	DefaultQueueBytes       = 4 << 20
	DefaultWriteTimeout     = 10 * time.Second
	DefaultSubscribeTimeout = 10 * time.Second
	// DefaultMaxMessageBytes stays under NATS's default max_payload (1 MiB)
	// with room for the envelope.
	DefaultMaxMessageBytes = 512 << 10
)

// Options configures a Hub. The zero value is ready to use.
type Options struct {
	// QueueMessages is how many messages may wait for one member. A
	// member with a full queue is closed with 1008 "too slow". Zero means
	// DefaultQueueMessages.
	QueueMessages int

	// QueueBytes is how many payload bytes may wait for one member, the
	// other bound of the same queue. Zero means DefaultQueueBytes.
	QueueBytes int

	// WriteTimeout bounds one write to a member. A member whose write
	// takes longer is disconnected without a close handshake: its peer is
	// not reading, so a close frame would not get through. It also bounds
	// how late a slow member's 1008 may come. Zero means
	// DefaultWriteTimeout.
	WriteTimeout time.Duration

	// SubscribeTimeout bounds the broker's confirmation of a new topic in
	// Join and Member.Subscribe. Zero means DefaultSubscribeTimeout.
	SubscribeTimeout time.Duration

	// MaxMessageBytes is the largest payload Publish accepts; larger ones
	// fail with ErrMessageTooBig. Zero means DefaultMaxMessageBytes.
	// Brokers have limits of their own (NATS: 1 MiB by default).
	MaxMessageBytes int

	// Authorize, when not nil, decides whether a member may read a topic:
	// Join, JoinWith and Member.Subscribe call it with the member (its ID
	// and Meta, the identity its credentials gave) and each topic, and
	// fail with a *ForbiddenError carrying its error when it returns one. Member.Reauthorize calls it again for every topic of
	// the member. It runs on the caller's goroutine: keep it quick.
	Authorize func(m *Member, topic string) error

	// OnRevoked, when not nil, is called when Member.Reauthorize has
	// removed a member from a topic Authorize now refuses, with the
	// refusal: the application decides what to tell the client.
	OnRevoked func(m *Member, topic string, err error)

	// Backpressure, when not nil, chooses the policy of each topic's
	// messages in a member's full queue; it is called once per topic
	// subscription. Nil means CloseSlow for every topic.
	Backpressure func(topic string) Backpressure

	// OnBrokerState, when not nil and when the broker implements Monitor,
	// is called with false when the broker's Health goes down, again
	// whenever another part goes down while it is down, and with true when
	// it is up again; Stats().Broker.Down() names the parts down. It runs
	// synchronously on the broker's goroutine and must not block; CloseAll
	// does not block. A typical use calls CloseCutOff: the members whose
	// messages are being lost get 1013 Try Again Later, reconnect and
	// resynchronise, and a peer instance gone closes nobody. The state at
	// construction is not a change: Stats().Broker gives it.
	OnBrokerState func(h *Hub, up bool)

	// Logger receives dropped members and malformed broker messages.
	// Nil means no logs.
	Logger *zap.Logger
}

// Hub delivers the messages of a Broker's topics to the sockets that joined
// them. It subscribes to each topic once, however many members it has
// there, and unsubscribes when the last one leaves.
//
// Goroutines: every member has one writer goroutine, started by Join and
// owned by the hub. It ends when the member leaves (its socket closed, or
// the hub closed it); Shutdown waits for all of them.
type Hub struct {
	b    Broker
	opts Options
	log  *zap.Logger
	id   string        // this hub's part of its members' keys
	seq  atomic.Uint64 // the other part
	mon  Monitor       // nil when the broker has none

	// ctx is the parent of every subscription's context; abort cancels
	// it when Shutdown's context ends.
	ctx   context.Context
	abort context.CancelFunc

	// mu guards the fields below, every topic's refs, and every member's
	// topics. It is never held during I/O, broker calls, or while waiting
	// for a topic's lock (a fan-out), so Join, Publish and Stats never
	// wait for one.
	mu      sync.RWMutex
	topics  map[string]*topic
	members map[*Member]struct{}
	closed  atomic.Bool // set under mu: Join's check and writers.Add are ordered with it

	writers   sync.WaitGroup
	stopState func()

	published     atomic.Uint64
	received      atomic.Uint64
	delivered     atomic.Uint64
	dropped       atomic.Uint64
	oversized     atomic.Uint64
	slow          atomic.Uint64
	forbidden     atomic.Uint64
	revoked       atomic.Uint64
	writeTimeouts atomic.Uint64
	malformed     atomic.Uint64

	// healthMu guards health: the broker's Health as last notified, which
	// Stats and CloseCutOff read, so that neither calls the broker, not
	// even from inside its notification.
	healthMu sync.Mutex
	health   Health
}

// NewHub returns a hub on b. It starts no goroutine. Invalid options (a
// nil broker, a negative bound) panic, naming the field. The hub does not
// own b: close b after Shutdown.
func NewHub(b Broker, opts Options) *Hub {
	if b == nil {
		panic("broadcast: NewHub: nil Broker")
	}
	if err := opts.validate(); err != nil {
		panic("broadcast: NewHub: " + err.Error())
	}
	if opts.QueueMessages == 0 {
		opts.QueueMessages = DefaultQueueMessages
	}
	if opts.QueueBytes == 0 {
		opts.QueueBytes = DefaultQueueBytes
	}
	if opts.WriteTimeout == 0 {
		opts.WriteTimeout = DefaultWriteTimeout
	}
	if opts.SubscribeTimeout == 0 {
		opts.SubscribeTimeout = DefaultSubscribeTimeout
	}
	if opts.MaxMessageBytes == 0 {
		opts.MaxMessageBytes = DefaultMaxMessageBytes
	}
	if opts.MaxMessageBytes > opts.QueueBytes {
		// One message over the queue's bytes would close every member
		// as too slow.
		panic(fmt.Sprintf("broadcast: NewHub: Options.MaxMessageBytes (%d) must not exceed QueueBytes (%d)",
			opts.MaxMessageBytes, opts.QueueBytes))
	}
	h := &Hub{
		b:       b,
		opts:    opts,
		log:     opts.Logger,
		id:      newHubID(),
		topics:  make(map[string]*topic),
		members: make(map[*Member]struct{}),
	}
	if h.log == nil {
		h.log = zap.NewNop()
	}
	h.ctx, h.abort = context.WithCancel(context.Background())
	h.health = Health{Up: true}
	if mon, ok := b.(Monitor); ok {
		h.mon = mon
		notified, read := h.brokerHealth(mon.Health())
		h.stopState = mon.NotifyHealth(notified)
		read(mon.Health()) // a change between the two calls was not notified
	}
	return h
}

// newHubID returns 8 random bytes in base64: member keys unique across a
// fleet without coordination.
func newHubID() string {
	var b [8]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand)
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// brokerHealthNow returns the broker's Health as last notified, with
// parts of the caller's own.
func (h *Hub) brokerHealthNow() Health {
	h.healthMu.Lock()
	defer h.healthMu.Unlock()
	hl := h.health
	hl.Parts = slices.Clone(hl.Parts)
	return hl
}

// brokerHealth returns the Monitor callback, starting from the Health at
// construction: it records the Health, and logs and reports Up going up,
// going down, and another part going down while down. read takes a Health
// that NewHub read after registering the callback, unless the broker has
// notified one since, which is as new or newer.
func (h *Hub) brokerHealth(start Health) (notified, read func(Health)) {
	var mu sync.Mutex // NewHub and the broker may call at once
	down, seen := start.Down(), false
	h.health = start
	apply := func(hl Health) {
		h.healthMu.Lock()
		h.health = hl
		h.healthMu.Unlock()
		now := hl.Down()
		worse := slices.ContainsFunc(now, func(p string) bool { return !slices.Contains(down, p) })
		back := len(now) == 0 && len(down) > 0
		down = now
		switch {
		case back:
			h.log.Info("broker up")
		case worse:
			h.log.Warn("broker down: messages may not reach every instance", zap.Strings("down", now))
		default:
			return
		}
		if h.opts.OnBrokerState != nil {
			h.opts.OnBrokerState(h, back)
		}
	}
	notified = func(hl Health) {
		mu.Lock()
		defer mu.Unlock()
		seen = true
		apply(hl)
	}
	read = func(hl Health) {
		mu.Lock()
		defer mu.Unlock()
		if !seen {
			apply(hl)
		}
	}
	return notified, read
}

func (o *Options) validate() error {
	switch {
	case o.QueueMessages < 0:
		return fmt.Errorf("QueueMessages must not be negative, got %d", o.QueueMessages)
	case o.QueueBytes < 0:
		return fmt.Errorf("QueueBytes must not be negative, got %d", o.QueueBytes)
	case o.WriteTimeout < 0:
		return fmt.Errorf("WriteTimeout must not be negative, got %v", o.WriteTimeout)
	case o.SubscribeTimeout < 0:
		return fmt.Errorf("SubscribeTimeout must not be negative, got %v", o.SubscribeTimeout)
	case o.MaxMessageBytes < 0:
		return fmt.Errorf("MaxMessageBytes must not be negative, got %d", o.MaxMessageBytes)
	}
	return nil
}

// Join adds an accepted socket to the hub and subscribes it to topics. From
// then on the hub writes to the socket; the caller keeps reading it (or
// calls CloseRead) and must not return from its handler while the socket is
// open, nor write to it: Member.Send writes in order with the topics'
// messages. The member leaves every topic when the socket closes.
//
// Join fails with ErrHubClosed after Shutdown, with ErrInvalidTopic, or
// with the broker's error for a topic it could not subscribe; the socket
// is then left open and untouched.
func (h *Hub) Join(c *chiws.Conn, topics ...string) (*Member, error) {
	return h.JoinWith(c, JoinOptions{}, topics...)
}

// JoinWith is Join with the member's identity, or paused (JoinOptions).
func (h *Hub) JoinWith(c *chiws.Conn, o JoinOptions, topics ...string) (*Member, error) {
	if c == nil {
		return nil, fmt.Errorf("broadcast: join: nil Conn")
	}
	if err := o.validate(); err != nil {
		return nil, fmt.Errorf("broadcast: join: %w", err)
	}
	for _, t := range topics {
		if err := ValidateTopic(t); err != nil {
			return nil, fmt.Errorf("broadcast: join: %w", err)
		}
	}
	m := &Member{
		h:        h,
		c:        c,
		key:      h.id + "." + strconv.FormatUint(h.seq.Add(1), 36),
		id:       o.ID,
		topics:   make(map[string]*topic),
		paused:   o.Paused,
		wake:     make(chan struct{}, 1),
		timedOut: make(chan struct{}, 1),
	}
	meta := bytes.Clone(o.Meta)
	m.meta.Store(&meta)
	for _, t := range topics {
		if err := h.authorize(m, t); err != nil {
			return nil, fmt.Errorf("broadcast: join: %w", err)
		}
	}
	h.mu.Lock()
	if h.closed.Load() {
		h.mu.Unlock()
		return nil, fmt.Errorf("broadcast: join: %w", ErrHubClosed)
	}
	h.members[m] = struct{}{}
	// Added under mu with the closed check, so Shutdown's Wait sees it.
	h.writers.Add(1)
	h.mu.Unlock()
	m.timer = time.AfterFunc(time.Hour, m.writeTimedOut)
	m.timer.Stop() // armed by each write

	for _, t := range topics {
		if err := m.Subscribe(t); err != nil {
			h.forget(m)
			h.writers.Done()
			return nil, fmt.Errorf("broadcast: join: %w", err)
		}
	}
	if o.ID != "" {
		c.AddLogFields(zap.String("member", o.ID))
	}
	// Owned by the hub: it ends when the member leaves, and Shutdown
	// waits for it (writers).
	go m.run()
	return m, nil
}

// authorize asks Options.Authorize whether m may read topic; a refusal is
// counted and logged at Debug, since a client can cause it at will.
func (h *Hub) authorize(m *Member, topic string) error {
	if h.opts.Authorize == nil {
		return nil
	}
	err := h.opts.Authorize(m, topic)
	if err == nil {
		return nil
	}
	h.forbidden.Add(1)
	h.log.Debug("topic refused", zap.String("member", m.id), zap.String("topic", topic), zap.Error(err))
	return &ForbiddenError{Topic: topic, Err: err}
}

// Publish sends a message of type typ (text or binary) to every member of
// topic in every hub on the broker, the publisher's own socket included
// when it is a member. It returns once the broker has taken the message.
// A text message must be valid UTF-8. When the broker is unavailable,
// Publish fails at once with an error wrapping ErrBrokerUnavailable.
//
// Messages of one publisher to one topic arrive in the order they were
// published, at every member of every hub. Nothing is promised across
// topics, nor between publishers.
func (h *Hub) Publish(ctx context.Context, topic string, typ websocket.MessageType, p []byte) error {
	return h.publish(ctx, topic, typ, p, "")
}

// PublishExcept is Publish to every member of topic but except, on every
// instance: a typing indicator, a cursor, a client's own message it has
// already shown.
func (h *Hub) PublishExcept(ctx context.Context, topic string, except *Member, typ websocket.MessageType, p []byte) error {
	if except == nil {
		return fmt.Errorf("broadcast: publish: nil Member to leave out")
	}
	return h.publish(ctx, topic, typ, p, except.key)
}

func (h *Hub) publish(ctx context.Context, topic string, typ websocket.MessageType, p []byte, sender string) error {
	if err := ValidateTopic(topic); err != nil {
		return fmt.Errorf("broadcast: publish: %w", err)
	}
	if len(p) > h.opts.MaxMessageBytes {
		return fmt.Errorf("broadcast: publish: %w: %d bytes, limit %d", ErrMessageTooBig, len(p), h.opts.MaxMessageBytes)
	}
	msg, err := AppendEnvelope(nil, Envelope{Type: typ, Payload: p, Time: time.Now(), Sender: sender})
	if err != nil {
		return fmt.Errorf("broadcast: publish: %w", err)
	}
	if h.closed.Load() {
		return fmt.Errorf("broadcast: publish: %w", ErrHubClosed)
	}
	if err := h.b.Publish(ctx, topic, msg); err != nil {
		return fmt.Errorf("broadcast: publish: %w", err)
	}
	h.published.Add(1)
	return nil
}

// Len returns the number of this hub's members subscribed to topic.
func (h *Hub) Len(topic string) int {
	h.mu.RLock()
	t := h.topics[topic]
	h.mu.RUnlock()
	if t == nil {
		return 0
	}
	return t.len()
}

// Stats are a hub's counters and its broker's health.
type Stats struct {
	Members   int    // sockets in the hub
	Topics    int    // topics with a broker subscription
	Published uint64 // messages this hub published
	Received  uint64 // broker messages received, once per topic subscription
	Delivered uint64 // messages queued for members, once per member
	Dropped   uint64 // messages a member's DropOldest or KeepLatest topic dropped
	Oversized uint64 // broker messages over QueueBytes, dropped for every member
	Slow      uint64 // members closed with 1008 "too slow"
	Malformed uint64 // broker messages dropped as malformed

	// WriteTimeouts counts members aborted because a write took longer
	// than WriteTimeout (ErrWriteTimeout).
	WriteTimeouts uint64

	// Forbidden counts the topics Authorize refused at Join or Subscribe,
	// Revoked those Reauthorize took from members.
	Forbidden uint64
	Revoked   uint64

	// Broker is the broker's Health as it last notified the hub, which
	// is its current state until Shutdown stops the notifications: Up,
	// with no parts, for a broker that is not a Monitor.
	Broker Health
}

// Stats returns the hub's counters and its broker's health.
func (h *Hub) Stats() Stats {
	h.mu.RLock()
	s := Stats{Members: len(h.members), Topics: len(h.topics)}
	h.mu.RUnlock()
	s.Published = h.published.Load()
	s.Received = h.received.Load()
	s.Delivered = h.delivered.Load()
	s.Dropped = h.dropped.Load()
	s.Oversized = h.oversized.Load()
	s.Slow = h.slow.Load()
	s.Malformed = h.malformed.Load()
	s.WriteTimeouts = h.writeTimeouts.Load()
	s.Forbidden = h.forbidden.Load()
	s.Revoked = h.revoked.Load()
	s.Broker = h.brokerHealthNow()
	return s
}

// CloseAll closes every member's socket with code and reason, after the
// write in progress; members leave as their sockets close. It does not
// block, so OnBrokerState may call it. Members that join later stay open.
// The sockets' Context causes match chiws.ErrClosedByServer.
func (h *Hub) CloseAll(code websocket.StatusCode, reason string) {
	h.closeAll(nil, code, reason)
}

// CloseCutOff closes, as CloseAll does, the members whose messages are
// being lost: every member while a part of kind PartAll is down (this
// instance is cut off), otherwise the members of the topics whose
// partition is down (Monitor.PartOf). A peer down closes nobody: this
// instance's members still get the rest of the fleet's messages, and
// closing them, on every instance, for one crashed peer would only move
// the load. It is what OnBrokerState typically calls when up is false.
func (h *Hub) CloseCutOff(code websocket.StatusCode, reason string) {
	if h.mon == nil {
		return
	}
	all, parts := false, map[string]bool{}
	for _, p := range h.brokerHealthNow().Parts {
		switch {
		case p.Up || p.Kind == PartPeer:
		case p.Kind == PartTopics:
			parts[p.Name] = true
		default:
			all = true
		}
	}
	if !all && len(parts) == 0 {
		return
	}
	h.mu.RLock()
	defer h.mu.RUnlock()
	lost := make(map[string]bool) // the topics of a part down, each looked up once
	for name := range h.topics {
		lost[name] = parts[h.mon.PartOf(name)]
	}
	for m := range h.members {
		cut := all
		for name := range m.topics {
			cut = cut || lost[name]
		}
		if cut {
			m.close(nil, code, reason)
		}
	}
}

func (h *Hub) closeAll(cause error, code websocket.StatusCode, reason string) {
	h.mu.RLock()
	defer h.mu.RUnlock()
	for m := range h.members {
		m.close(cause, code, reason)
	}
}

// Shutdown closes every member's socket with 1001 Going Away as part of
// the server's shutdown (the sockets' Context causes match
// chiws.ErrShuttingDown, and their close logs say closedBy "shutdown"),
// releases the broker subscriptions and waits for the members' writers,
// or until ctx is done. Then it aborts the sockets of the members left,
// whatever they were doing (a write, a close handshake), and returns
// ctx.Err(); a later Shutdown call waits for their writers. Join and
// Publish fail with
// ErrHubClosed from the start of Shutdown. It may be called more than
// once. It does not close the broker.
//
// Call it after the middleware's Shutdown, which has closed the sockets
// already; see docs/broadcast.md for the whole order.
func (h *Hub) Shutdown(ctx context.Context) error {
	h.mu.Lock()
	first := !h.closed.Swap(true)
	h.mu.Unlock()
	if first && h.stopState != nil {
		// Outside mu: a notification under way may be in CloseAll.
		h.stopState()
	}
	h.closeAll(chiws.ErrShuttingDown, websocket.StatusGoingAway, "server shutting down")

	done := make(chan struct{})
	go func() { // owned by Shutdown's caller: ends with the last writer, which CloseTimeout and the abort below bound
		h.writers.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		h.abort() // cancels pending subscriptions
		h.mu.RLock()
		members := slices.Collect(maps.Keys(h.members))
		h.mu.RUnlock()
		for _, m := range members {
			_ = m.c.CloseNow() // ends the write or the close handshake under way
		}
		return ctx.Err()
	}
}

// forget removes m from the hub and from every topic, and releases the
// broker subscriptions nobody needs any more.
func (h *Hub) forget(m *Member) {
	m.subMu.Lock()
	defer m.subMu.Unlock()
	var left, release []*topic
	h.mu.Lock()
	m.gone = true
	delete(h.members, m)
	for name, t := range m.topics {
		delete(m.topics, name)
		left = append(left, t)
		if h.dropLocked(t) {
			release = append(release, t)
		}
	}
	h.mu.Unlock()
	for _, t := range left {
		t.remove(m) // outside h.mu: it waits for t's fan-out
	}
	for _, t := range release {
		h.unsubscribe(t)
	}
}

// dropLocked drops one member's interest in t and reports whether t's
// broker subscription must now be released. h.mu is held; the caller
// removes the member from t's list after releasing it.
func (h *Hub) dropLocked(t *topic) bool {
	t.refs--
	if t.refs > 0 {
		return false
	}
	if h.topics[t.name] == t {
		delete(h.topics, t.name)
	}
	select {
	case <-t.ready:
		return t.sub != nil
	default:
		return false // not reached: the member subscribing holds a reference until its Subscribe returns
	}
}

func (h *Hub) unsubscribe(t *topic) {
	if err := t.sub.Unsubscribe(); err != nil {
		h.log.Warn("broker unsubscribe failed", zap.String("topic", t.name), zap.Error(err))
	}
}
