package broadcast

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

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

	// OnBrokerState, when not nil and when the broker implements
	// StateNotifier, is called with false when the broker loses its
	// server and with true when it is back. It runs synchronously on the
	// broker's goroutine and must not block; CloseAll does not block. A
	// typical use closes every socket with 1013 Try Again Later when the
	// broker goes down, so clients reconnect and resynchronise.
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

	// ctx is the context of every write and subscription; abort cancels
	// it when Shutdown's context ends. A writer then in coder/websocket's
	// close handshake still ends within its timeouts (see Shutdown).
	ctx   context.Context
	abort context.CancelFunc

	// mu guards the fields below and every topic's members and refs, and
	// every member's topics. It is never held during I/O or broker calls.
	mu      sync.RWMutex
	topics  map[string]*topic
	members map[*Member]struct{}
	closed  bool

	writers   sync.WaitGroup
	stopState func()

	slow      atomic.Uint64
	malformed atomic.Uint64
	delivered atomic.Uint64
}

// topic is the hub's broker subscription to one topic.
type topic struct {
	name  string
	ready chan struct{} // closed once the broker's Subscribe returned
	sub   Subscription  // set before ready is closed; nil on error
	err   error         // set before ready is closed

	// refs counts members subscribed or subscribing; the subscription is
	// released when it drops to zero. members are those whose Subscribe
	// returned; deliveries go to them.
	refs    int
	members map[*Member]struct{}
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
		topics:  make(map[string]*topic),
		members: make(map[*Member]struct{}),
	}
	if h.log == nil {
		h.log = zap.NewNop()
	}
	h.ctx, h.abort = context.WithCancel(context.Background())
	if mon, ok := b.(Monitor); ok && opts.OnBrokerState != nil {
		up := mon.Health().Up
		h.stopState = mon.NotifyHealth(func(hl Health) {
			if hl.Up != up {
				up = hl.Up
				opts.OnBrokerState(h, up)
			}
		})
	}
	return h
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
// open. The member leaves every topic when the socket closes.
//
// Join fails with ErrHubClosed after Shutdown, with ErrInvalidTopic, or
// with the broker's error for a topic it could not subscribe; the socket
// is then left open and untouched.
func (h *Hub) Join(c *chiws.Conn, topics ...string) (*Member, error) {
	if c == nil {
		return nil, fmt.Errorf("broadcast: join: nil Conn")
	}
	for _, t := range topics {
		if err := ValidateTopic(t); err != nil {
			return nil, fmt.Errorf("broadcast: join: %w", err)
		}
	}
	m := &Member{
		h:      h,
		c:      c,
		topics: make(map[string]*topic),
		wake:   make(chan struct{}, 1),
	}
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		return nil, fmt.Errorf("broadcast: join: %w", ErrHubClosed)
	}
	h.members[m] = struct{}{}
	// Added under mu with the closed check, so Shutdown's Wait sees it.
	h.writers.Add(1)
	h.mu.Unlock()

	for _, t := range topics {
		if err := m.Subscribe(t); err != nil {
			h.forget(m)
			h.writers.Done()
			return nil, fmt.Errorf("broadcast: join: %w", err)
		}
	}
	// Owned by the hub: it ends when the member leaves, and Shutdown
	// waits for it (writers).
	go m.run()
	return m, nil
}

// Publish sends a message of type typ (text or binary) to every member of
// topic in every hub on the broker, the publisher's own socket included
// when it is a member. It returns once the broker has taken the message.
// A text message must be valid UTF-8. When the broker is unavailable,
// Publish fails at once with an error wrapping ErrBrokerUnavailable.
func (h *Hub) Publish(ctx context.Context, topic string, typ websocket.MessageType, p []byte) error {
	if err := ValidateTopic(topic); err != nil {
		return fmt.Errorf("broadcast: publish: %w", err)
	}
	switch {
	case typ != websocket.MessageText && typ != websocket.MessageBinary:
		return fmt.Errorf("broadcast: publish: %w: message type %d", ErrInvalidMessage, typ)
	case typ == websocket.MessageText && !utf8.Valid(p):
		return fmt.Errorf("broadcast: publish: %w: text is not UTF-8", ErrInvalidMessage)
	case len(p) > h.opts.MaxMessageBytes:
		return fmt.Errorf("broadcast: publish: %w: %d bytes, limit %d", ErrMessageTooBig, len(p), h.opts.MaxMessageBytes)
	}
	h.mu.RLock()
	closed := h.closed
	h.mu.RUnlock()
	if closed {
		return fmt.Errorf("broadcast: publish: %w", ErrHubClosed)
	}
	msg, err := AppendEnvelope(nil, Envelope{Type: typ, Payload: p})
	if err != nil {
		return fmt.Errorf("broadcast: publish: %w", err)
	}
	if err := h.b.Publish(ctx, topic, msg); err != nil {
		return fmt.Errorf("broadcast: publish: %w", err)
	}
	return nil
}

// Len returns the number of this hub's members subscribed to topic.
func (h *Hub) Len(topic string) int {
	h.mu.RLock()
	defer h.mu.RUnlock()
	if t := h.topics[topic]; t != nil {
		return len(t.members)
	}
	return 0
}

// Stats are a hub's counters.
type Stats struct {
	Members   int    // sockets in the hub
	Topics    int    // topics with a broker subscription
	Delivered uint64 // messages queued for members
	Slow      uint64 // members closed with 1008 "too slow"
	Malformed uint64 // broker messages dropped as malformed
}

// Stats returns the hub's counters.
func (h *Hub) Stats() Stats {
	h.mu.RLock()
	s := Stats{Members: len(h.members), Topics: len(h.topics)}
	h.mu.RUnlock()
	s.Delivered = h.delivered.Load()
	s.Slow = h.slow.Load()
	s.Malformed = h.malformed.Load()
	return s
}

// CloseAll closes every member's socket with code and reason, after the
// write in progress; members leave as their sockets close. It does not
// block, so OnBrokerState may call it. Members that join later stay open.
// The sockets' Context causes match chiws.ErrClosedByServer.
func (h *Hub) CloseAll(code websocket.StatusCode, reason string) {
	h.closeAll(nil, code, reason)
}

func (h *Hub) closeAll(cause error, code websocket.StatusCode, reason string) {
	h.mu.RLock()
	defer h.mu.RUnlock()
	for m := range h.members {
		m.close(cause, code, reason)
	}
}

// Shutdown closes every member's socket with 1001 Going Away (the sockets'
// Context causes match ErrHubClosed), releases the broker subscriptions
// and waits for the members' writers, or until ctx is done. Then it
// cancels the writes under way, which aborts their sockets, and returns
// ctx.Err(); a writer still in a close handshake ends within the
// middleware's Options.CloseTimeout, and a later Shutdown call waits for
// it. Join
// and Publish fail with ErrHubClosed from the start of Shutdown. It may be
// called more than once. It does not close the broker.
func (h *Hub) Shutdown(ctx context.Context) error {
	h.mu.Lock()
	first := !h.closed
	h.closed = true
	h.mu.Unlock()
	if first && h.stopState != nil {
		// Outside mu: a notification under way may be in CloseAll.
		h.stopState()
	}
	h.closeAll(ErrHubClosed, websocket.StatusGoingAway, "server shutting down")

	done := make(chan struct{})
	go func() { // owned by Shutdown's caller: ends with the last writer, which coder's close timeouts bound
		h.writers.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		h.abort() // cancels writes and pending subscriptions
		return ctx.Err()
	}
}

// deliver returns the broker handler of t. It decodes once and queues the
// message for each member without blocking.
func (h *Hub) deliver(t *topic) func([]byte) {
	return func(payload []byte) {
		e, err := ParseEnvelope(payload)
		if err != nil {
			h.malformed.Add(1)
			h.log.Warn("dropped a broker message", zap.String("topic", t.name), zap.Error(err))
			return
		}
		msg := message{typ: e.Type, data: e.Payload}
		var n uint64
		h.mu.RLock()
		for m := range t.members {
			if m.enqueue(msg) {
				n++
			}
		}
		h.mu.RUnlock()
		h.delivered.Add(n) // once per message, not per member: the counter is shared
	}
}

// forget removes m from the hub and from every topic, and releases the
// broker subscriptions nobody needs any more.
func (h *Hub) forget(m *Member) {
	var release []*topic
	h.mu.Lock()
	m.gone = true
	delete(h.members, m)
	for name, t := range m.topics {
		delete(m.topics, name)
		if h.dropLocked(m, t) {
			release = append(release, t)
		}
	}
	h.mu.Unlock()
	for _, t := range release {
		h.unsubscribe(t)
	}
}

// dropLocked removes m's interest in t and reports whether t's broker
// subscription must now be released. h.mu is held.
func (h *Hub) dropLocked(m *Member, t *topic) bool {
	delete(t.members, m)
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
		return false // the subscribing member releases it when Subscribe returns
	}
}

func (h *Hub) unsubscribe(t *topic) {
	if err := t.sub.Unsubscribe(); err != nil {
		h.log.Warn("broker unsubscribe failed", zap.String("topic", t.name), zap.Error(err))
	}
}
