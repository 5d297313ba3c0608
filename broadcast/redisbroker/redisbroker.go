// Package redisbroker is a broadcast.Broker on Redis pub/sub (go-redis v9).
//
// # Partitions
//
// Topics are spread over Options.Partitions partitions (16 by default):
// topic t belongs to partition FNV-1a-32(t) mod Partitions, the 32-bit
// FNV-1a hash of the topic's bytes (Partition computes it). Each partition
// is one pub/sub connection read by one goroutine, carrying all of its
// topics' channels, so a broker holds Partitions connections however many
// topics it serves. That goroutine reads with no deadline, ever: a
// deadline that fires in the middle of a reply makes go-redis drop what
// it read of it, and the next read would parse the rest of a payload,
// which any publisher controls, as replies of its own. The partition
// judges its health on its own clock instead (see Health), and ends a
// read by closing the connection.
//
// # Channels
//
// With a *redis.Client, a topic's channel is <ChannelPrefix><topic> and
// the broker uses PUBLISH and SUBSCRIBE. With a *redis.ClusterClient (or
// Options.Sharded on Redis 7) it uses sharded pub/sub (SPUBLISH,
// SSUBSCRIBE), so each message crosses only the shard that owns its
// channel, and the channel carries its partition as a hash tag:
//
//	{<ChannelPrefix><partition>}<topic>     e.g. {chiws.broadcast.7}room.42
//
// with the partition in decimal. Every channel of a partition is in one
// hash slot (its connection goes to one master), and the prefix inside the
// tag puts two applications sharing a cluster in different slots.
// Broker.Channel returns a topic's channel. A publisher outside the
// broker may publish there, with every instance's ChannelPrefix and
// Partitions, a broadcast envelope (broadcast.AppendEnvelope; anything
// else is dropped as malformed), with SPUBLISH when sharded and PUBLISH
// otherwise. Options.ClassicPublish keeps PUBLISH and SUBSCRIBE on a
// cluster, where Redis then sends every message to every node.
//
// The probes (see Health) use channels no topic can have, as '*' is not
// allowed in topics: {<ChannelPrefix><partition>}*probe.<instance> when
// sharded, <ChannelPrefix>*probe.<instance>.<partition> otherwise, where
// instance is random per Broker; only the broker itself subscribes them.
// A *redis.Ring is refused: it shards PUBLISH by channel but a pub/sub
// connection by its first channel. A ClusterClient with ReadOnly (or
// RouteByLatency, RouteRandomly) subscribes on replicas, which works:
// sharded messages reach the shard's replicas.
//
// # Health
//
// Each partition checks that messages flow, as centrifuge does: every
// HealthInterval it publishes a probe, through the client's pool as
// Publish does, to a control channel of its own (in the partition's slot
// when sharded) that it subscribes on its own pub/sub connection, and
// expects it back within HealthTimeout. A partition is down from the
// first sign that messages no longer flow: a connection error, Redis
// dropping its subscriptions (a slot moved or unserved), the probe failing
// or going unanswered. So a dead, frozen or partitioned Redis is reported
// within HealthInterval + HealthTimeout. A probe queued behind a backlog
// of messages longer than HealthTimeout reports the partition down too
// (messages are that late) but keeps its connection while it delivers.
// A partition is up again once a probe went through after the failure. Broker.Health has one part per
// partition ("partition 07"); Publish to a topic whose partition is down
// fails at once with broadcast.ErrBrokerUnavailable, while the other
// partitions keep working. New settles the initial state, so a broker
// created while Redis is down reports down.
//
// Recovery: the broker replaces a partition's connection (a new one,
// subscribed to the same channels, on the slot's current owner, after a
// growing, jittered delay) after a connection error, when Redis dropped
// its subscriptions or refused them for the slot's sake (MOVED,
// CLUSTERDOWN), when its subscription is not confirmed within
// HealthTimeout, or when a probe that Redis accepted never arrived and the
// connection carried nothing for HealthTimeout (a black-holed route). A
// server that answers nobody (a long script, SIGSTOP) keeps its
// subscribers: the partition stays down until a probe gets through again.
// Redis refusing one channel (an ACL's NOPERM) concerns that channel
// only: its Subscribe fails with Redis's error at once, the channel is
// forgotten, and the partition stays up; a channel refused when a new
// connection subscribes again (a permission revoked since) is logged at
// Warn and its subscribers receive nothing more.
//
// # Client settings
//
// Redis pub/sub delivers at most once and keeps one publisher's messages
// in order, as long as go-redis does not retry a PUBLISH whose reply was
// lost: give the client MaxRetries: -1 (go-redis retries three times by
// default; a ClusterClient also retries up to MaxRedirects times) and
// short dial, read and write timeouts. ClientOptions and ClusterOptions
// parse a URL into such settings; New logs a warning for a client that
// retries.
package redisbroker

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/fnv"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/chiws/chiws/broadcast"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
)

// Defaults and bounds for Options.
const (
	DefaultChannelPrefix  = "chiws.broadcast."
	DefaultPartitions     = 16
	MaxPartitions         = 1024
	DefaultHealthInterval = 2 * time.Second
	DefaultHealthTimeout  = 2 * time.Second

	// minHealth is the shortest HealthInterval and HealthTimeout: a
	// probe takes a round trip through Redis and back, and shorter
	// bounds would report a merely busy partition down.
	minHealth = 20 * time.Millisecond
)

// Options configures a Broker. The zero value is ready to use.
type Options struct {
	// ChannelPrefix starts every topic's Redis channel, so that several
	// applications can share a Redis. Empty means DefaultChannelPrefix.
	// With sharded pub/sub it goes inside the hash tag, so it must not
	// contain '{' or '}'.
	ChannelPrefix string

	// Partitions is how many pub/sub connections carry the topics: 1 to
	// MaxPartitions. Zero means DefaultPartitions. Every instance of an
	// application must use the same value (with sharded pub/sub it is
	// part of the channel names), and changing it is a fleet-wide
	// change: instances with different values do not hear each other.
	// On a Redis Cluster each partition is one hash slot, and few of them
	// spread unevenly over the masters: with the default prefix, 16 land
	// 4/5/7 on three masters with the standard slot layout, 64 land
	// 21/21/22.
	Partitions int

	// Sharded uses sharded pub/sub (SPUBLISH, SSUBSCRIBE; Redis 7 or
	// later) with a *redis.Client too. It is on by default for a
	// *redis.ClusterClient; see ClassicPublish.
	Sharded bool

	// ClassicPublish uses PUBLISH and SUBSCRIBE on a *redis.ClusterClient
	// instead of sharded pub/sub. Redis Cluster then sends every message
	// to every node over its bus, whichever node subscribers use, so the
	// cluster's pub/sub capacity does not grow with its masters; use it
	// for Redis older than 7 or a cluster that serves few messages. It
	// cannot be combined with Sharded. Each partition's messages are
	// published through one master, the owner of the slot of
	// {<ChannelPrefix><partition>}, which keeps one publisher's messages
	// in order; a raw publisher must do the same to keep its order.
	ClassicPublish bool

	// HealthInterval is how often each partition sends its probe while
	// it is up: 0 for DefaultHealthInterval, or at least 20 ms. Each
	// instance publishes Partitions probes per interval.
	HealthInterval time.Duration

	// HealthTimeout is how long a probe may take to come back, and bounds
	// the probe's publish and the confirmation of a connection's
	// subscriptions; a partition is reported down within
	// HealthInterval + HealthTimeout of a failure. New waits up to
	// HealthTimeout for the initial state. 0 means DefaultHealthTimeout;
	// otherwise at least 20 ms. Under a load that delays the probe
	// longer than this (a receive backlog), the partition is reported
	// down: messages are that late too.
	HealthTimeout time.Duration

	// Logger receives partitions going down (Warn, with the reason) and
	// coming back (Info), once per change, and a client that retries.
	// Nil means no logs.
	Logger *zap.Logger
}

// Broker is a broadcast.Broker on Redis pub/sub. It also implements
// broadcast.Monitor.
//
// Goroutines: each partition has one goroutine (run), started by New and
// owned by the broker, which owns two more: the reader of its current
// pub/sub connection, blocked in Receive with no deadline, which run ends
// by closing that connection and waits for before it dials another or
// returns; and, while a probe's publish is under way, one for that
// publish, which run waits for before it returns. Close cancels every run
// and waits for them.
type Broker struct {
	client   redis.UniversalClient
	prefix   string
	sharded  bool
	classic  *redis.ClusterClient // ClassicPublish on a cluster; nil otherwise
	counted  bool                 // a publish's reply counts the partition's subscribers (false for classic pub/sub on a cluster)
	interval time.Duration
	timeout  time.Duration
	log      *zap.Logger
	parts    []*partition

	cancel context.CancelFunc // stops every partition's goroutine (run)
	wg     sync.WaitGroup     // the partitions' goroutines
	closed atomic.Bool

	// stateMu guards every partition's state fields, listeners, nextID
	// and started. notifyMu serialises state changes with their
	// callbacks, so listeners see them in order; a callback must not
	// wait for it (it must not call the broker, which Health does not).
	stateMu   sync.Mutex
	notifyMu  sync.Mutex
	listeners map[int]func(broadcast.Health)
	nextID    int
	started   bool // New has returned: state changes are logged as they happen
}

type channel struct {
	subs      map[*subscription]func([]byte)
	confirmed chan struct{} // closed at the first confirmation, or when Redis refused the channel
	ok        bool
	err       error // Redis's refusal; set before confirmed is closed
}

type subscription struct {
	p  *partition
	ch string
}

// Reasons a partition is down.
var (
	errStarting    = errors.New("initial state not settled yet")
	errNoAnswer    = errors.New("no answer within HealthTimeout at start")
	errProbeLost   = errors.New("probe not received within HealthTimeout")
	errProbeLate   = errors.New("probe late by more than HealthTimeout behind a backlog of messages")
	errNoSubscribe = errors.New("probe reached no subscriber: the partition's subscription is gone")
	errUnconfirmed = errors.New("subscription not confirmed within HealthTimeout")
	errDropped     = errors.New("redis dropped the partition's subscriptions (slot moved or unserved)")
	errNoConn      = fmt.Errorf("%w: the partition has no pub/sub connection (reconnecting)", broadcast.ErrBrokerUnavailable)
)

// New returns a broker on client, which it does not own: close the client
// after the broker. It opens the partitions' pub/sub connections, starts
// their goroutines, and waits up to HealthTimeout for each partition's
// first probe, so that Health is known when it returns: a partition that
// could not be reached is down. Invalid options are an error.
func New(client redis.UniversalClient, opts Options) (*Broker, error) {
	if client == nil {
		return nil, errors.New("redisbroker: nil client")
	}
	if _, ok := client.(*redis.Ring); ok {
		// A Ring picks a shard per channel for PUBLISH but one shard per
		// pub/sub connection: a partition's messages would be lost.
		return nil, errors.New("redisbroker: a *redis.Ring is not supported: use a *redis.Client or *redis.ClusterClient")
	}
	switch {
	case opts.HealthInterval != 0 && opts.HealthInterval < minHealth:
		return nil, fmt.Errorf("redisbroker: HealthInterval must be 0 or at least %v, got %v", minHealth, opts.HealthInterval)
	case opts.HealthTimeout != 0 && opts.HealthTimeout < minHealth:
		return nil, fmt.Errorf("redisbroker: HealthTimeout must be 0 or at least %v, got %v", minHealth, opts.HealthTimeout)
	case opts.Partitions < 0 || opts.Partitions > MaxPartitions:
		return nil, fmt.Errorf("redisbroker: Partitions must be 1 to %d (0 for %d), got %d",
			MaxPartitions, DefaultPartitions, opts.Partitions)
	case opts.Sharded && opts.ClassicPublish:
		return nil, errors.New("redisbroker: Sharded and ClassicPublish exclude each other")
	}
	_, cluster := client.(*redis.ClusterClient)
	b := &Broker{
		client:    client,
		prefix:    orDefault(opts.ChannelPrefix, DefaultChannelPrefix),
		sharded:   opts.Sharded || (cluster && !opts.ClassicPublish),
		interval:  orDefault(opts.HealthInterval, DefaultHealthInterval),
		timeout:   orDefault(opts.HealthTimeout, DefaultHealthTimeout),
		log:       opts.Logger,
		listeners: make(map[int]func(broadcast.Health)),
	}
	if cluster && !b.sharded {
		b.classic = client.(*redis.ClusterClient)
	}
	// A publish's reply counts the subscribers of the node that took it
	// only. Classic PUBLISH on a cluster may be taken by another node
	// than the partition listens on; and with ReadOnly (or RouteByLatency
	// or RouteRandomly, which imply it) go-redis subscribes on a replica
	// of the slot while SPUBLISH goes to its master, which counts 0
	// however healthy the subscription. Then only the probe's arrival
	// tells; a subscription that is gone is found HealthTimeout later
	// instead of at once.
	b.counted = b.classic == nil && !(cluster && client.(*redis.ClusterClient).Options().ReadOnly)
	if b.sharded && strings.ContainsAny(b.prefix, "{}") {
		return nil, fmt.Errorf("redisbroker: ChannelPrefix %q must not contain '{' or '}' with sharded pub/sub (it goes inside the hash tag)", b.prefix)
	}
	if b.log == nil {
		b.log = zap.NewNop()
	}
	b.warnRetries()

	// The probe channels are this broker's own: nobody else's probes
	// reach its connections.
	var id [8]byte
	_, _ = rand.Read(id[:])
	instance := hex.EncodeToString(id[:])
	n := orDefault(opts.Partitions, DefaultPartitions)
	width := len(strconv.Itoa(n - 1))
	now := time.Now()
	ctx, cancel := context.WithCancel(context.Background())
	b.cancel = cancel
	for i := range n {
		p := &partition{
			b:        b,
			name:     fmt.Sprintf("partition %0*d", width, i),
			since:    now,
			err:      errStarting,
			settled:  make(chan struct{}),
			channels: make(map[string]*channel),
		}
		p.down.Store(true)
		p.route = "{" + b.prefix + strconv.Itoa(i) + "}"
		// '*' cannot occur in a topic, so no topic's channel is a probe's.
		if b.sharded {
			p.tag = "{" + b.prefix + strconv.Itoa(i) + "}"
			p.probe = p.tag + "*probe." + instance
		} else {
			p.probe = b.prefix + "*probe." + instance + "." + strconv.Itoa(i)
		}
		b.parts = append(b.parts, p)
	}
	for _, p := range b.parts {
		b.wg.Add(1)
		// Owned by the broker: Close cancels ctx, closes the pub/sub
		// connection and waits (wg).
		go p.run(ctx)
	}

	deadline := time.NewTimer(b.timeout)
	defer deadline.Stop()
wait:
	for _, p := range b.parts {
		select {
		case <-p.settled:
		case <-deadline.C:
			break wait
		}
	}
	b.stateMu.Lock()
	b.started = true
	var down []*partition
	for _, p := range b.parts {
		if !p.up {
			if p.err == errStarting {
				p.err = errNoAnswer
			}
			p.warned = true
			down = append(down, p)
		}
	}
	b.stateMu.Unlock()
	for _, p := range down {
		b.log.Warn("redis broker partition down at start", zap.String("part", p.name), zap.Error(p.errNow()))
	}
	return b, nil
}

// cmp returns v, or def when v is the zero value.
func orDefault[T comparable](v, def T) T {
	var zero T
	if v == zero {
		return def
	}
	return v
}

// warnRetries logs, once per broker, a client whose retries could send a
// PUBLISH twice.
func (b *Broker) warnRetries() {
	const why = "the redis client retries commands: a PUBLISH whose reply was lost is sent again, " +
		"duplicating and reordering messages; build its options with redisbroker.ClientOptions or ClusterOptions"
	switch c := b.client.(type) {
	case *redis.Client:
		// go-redis stores MaxRetries -1 as 0 (no retry).
		if o := c.Options(); o.MaxRetries != 0 {
			b.log.Warn(why, zap.Int("maxRetries", o.MaxRetries))
		}
	case *redis.ClusterClient:
		// The cluster client retries through its redirect loop too.
		if o := c.Options(); o.MaxRetries > 0 || o.MaxRedirects > 0 {
			b.log.Warn(why, zap.Int("maxRetries", o.MaxRetries), zap.Int("maxRedirects", o.MaxRedirects))
		}
	}
}

// newPubSub returns a pub/sub object that has no connection yet: go-redis
// dials at the first subscription, to the owner of its first channel's
// slot in a cluster.
func (b *Broker) newPubSub() *redis.PubSub {
	if b.sharded {
		return b.client.SSubscribe(context.Background())
	}
	return b.client.Subscribe(context.Background())
}

// Partition returns the partition of topic: the 32-bit FNV-1a hash of its
// bytes, modulo the number of partitions.
func (b *Broker) Partition(topic string) int {
	h := fnv.New32a()
	_, _ = h.Write([]byte(topic))
	return int(h.Sum32() % uint32(len(b.parts)))
}

// PartOf implements broadcast.Monitor: the name of topic's partition in
// Health ("partition 07").
func (b *Broker) PartOf(topic string) string {
	return b.parts[b.Partition(topic)].name
}

// Channel returns topic's Redis channel: <ChannelPrefix><topic>, or with
// sharded pub/sub {<ChannelPrefix><partition>}<topic>. A publisher outside
// the broker sends there an envelope built as broadcast.AppendEnvelope
// does, with PUBLISH, or SPUBLISH when sharded. The error wraps
// broadcast.ErrInvalidTopic.
func (b *Broker) Channel(topic string) (string, error) {
	ch, _, err := b.channel(topic)
	if err != nil {
		return "", fmt.Errorf("redisbroker: %w", err)
	}
	return ch, nil
}

// channel returns topic's channel and partition. With sharded pub/sub the
// prefix is in the tag.
func (b *Broker) channel(topic string) (string, *partition, error) {
	if err := broadcast.ValidateTopic(topic); err != nil {
		return "", nil, err
	}
	p := b.parts[b.Partition(topic)]
	if b.sharded {
		return p.tag + topic, p, nil
	}
	return b.prefix + topic, p, nil
}

// Health implements broadcast.Monitor: one part per partition, sorted by
// name.
func (b *Broker) Health() broadcast.Health {
	b.stateMu.Lock()
	defer b.stateMu.Unlock()
	return b.healthLocked()
}

func (b *Broker) healthLocked() broadcast.Health {
	parts := make([]broadcast.PartHealth, len(b.parts))
	for i, p := range b.parts {
		parts[i] = broadcast.PartHealth{Name: p.name, Kind: broadcast.PartTopics, Up: p.up, Since: p.since, Err: p.err}
	}
	return broadcast.HealthOf(parts)
}

// NotifyHealth implements broadcast.Monitor. f runs synchronously on the
// goroutine of the partition that changed, after each change, in order;
// it must not block and must not call the broker.
func (b *Broker) NotifyHealth(f func(broadcast.Health)) (stop func()) {
	b.stateMu.Lock()
	id := b.nextID
	b.nextID++
	b.listeners[id] = f
	b.stateMu.Unlock()
	return func() {
		b.stateMu.Lock()
		delete(b.listeners, id)
		b.stateMu.Unlock()
	}
}

// Publish sends payload to topic. While topic's partition is down it
// fails at once with broadcast.ErrBrokerUnavailable; a failed PUBLISH
// other than Redis's own error reply wraps it too.
func (b *Broker) Publish(ctx context.Context, topic string, payload []byte) error {
	ch, p, err := b.channel(topic)
	if err != nil {
		return fmt.Errorf("redisbroker: publish: %w", err)
	}
	switch {
	case b.closed.Load():
		return fmt.Errorf("redisbroker: publish: %w", broadcast.ErrBrokerClosed)
	case p.down.Load():
		return fmt.Errorf("redisbroker: publish: %w: %s is down", broadcast.ErrBrokerUnavailable, p.name)
	}
	if _, err = p.publish(ctx, ch, payload); err != nil {
		return fmt.Errorf("redisbroker: publish: %w", wrap(err))
	}
	return nil
}

// wrap marks errors other than Redis's own replies and the caller's
// context as the server being unavailable.
func wrap(err error) error {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	return wrapConnErr(err)
}

// Subscribe calls h with every message published to topic, on the
// reader goroutine of topic's partition (h must not block). It returns
// once Redis has confirmed the subscription; if Redis refuses the channel
// (an ACL's NOPERM), at once with Redis's error, which it wraps. The first
// subscription to a channel fails at once with
// broadcast.ErrBrokerUnavailable while the partition has no connection;
// a further one to a channel already subscribed returns at once, and the
// partition's next connection subscribes the channel again. ctx bounds
// the wait for the confirmation, not the write on the partition's
// connection, which every topic of the partition shares.
func (b *Broker) Subscribe(ctx context.Context, topic string, h func([]byte)) (broadcast.Subscription, error) {
	ch, p, err := b.channel(topic)
	if err != nil {
		return nil, fmt.Errorf("redisbroker: subscribe: %w", err)
	}
	if h == nil {
		return nil, errors.New("redisbroker: subscribe: nil handler")
	}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil, fmt.Errorf("redisbroker: subscribe: %w", broadcast.ErrBrokerClosed)
	}
	c := p.channels[ch]
	first := c == nil
	if first {
		c = &channel{subs: make(map[*subscription]func([]byte)), confirmed: make(chan struct{})}
		p.channels[ch] = c
	}
	s := &subscription{p: p, ch: ch}
	c.subs[s] = h
	p.mu.Unlock()

	if first {
		p.cmd.Lock()
		p.mu.RLock()
		cn := p.conn
		p.mu.RUnlock()
		switch {
		case ctx.Err() != nil: // it ended while waiting for p.cmd
			err = ctx.Err()
		case cn == nil:
			err = errNoConn
		default:
			// The connection is every topic's: a write cut short by the
			// caller's deadline would break it for all of them, so the
			// write has the broker's own bound, and ctx bounds the wait
			// for the confirmation only.
			wctx, cancel := context.WithTimeout(context.Background(), b.timeout)
			err = cn.send(wctx, b.subscribeKind(), ch)
			cancel()
		}
		p.cmd.Unlock()
		if err != nil {
			_ = s.Unsubscribe()
			if b.closed.Load() {
				return nil, fmt.Errorf("redisbroker: subscribe: %w", broadcast.ErrBrokerClosed)
			}
			if err != errNoConn {
				err = wrap(err)
			}
			return nil, fmt.Errorf("redisbroker: subscribe: %w", err)
		}
	}
	select {
	case <-c.confirmed:
		if c.err != nil {
			// Redis refused the channel (an ACL, say): reject forgot it.
			return nil, fmt.Errorf("redisbroker: subscribe: %w", c.err)
		}
		return s, nil
	case <-ctx.Done():
		_ = s.Unsubscribe()
		return nil, fmt.Errorf("redisbroker: subscribe: not confirmed: %w: %w", broadcast.ErrBrokerUnavailable, ctx.Err())
	}
}

// Unsubscribe implements broadcast.Subscription. The last subscription to
// a channel unsubscribes it on the partition's connection; an error there
// is not returned, since go-redis has forgotten the channel and will not
// subscribe it again.
func (s *subscription) Unsubscribe() error {
	p := s.p
	p.mu.Lock()
	c := p.channels[s.ch]
	if c == nil {
		p.mu.Unlock()
		return nil
	}
	if _, ok := c.subs[s]; !ok {
		p.mu.Unlock()
		return nil
	}
	delete(c.subs, s)
	last := len(c.subs) == 0
	if last {
		delete(p.channels, s.ch)
	}
	p.mu.Unlock()
	if !last {
		return nil
	}
	p.cmd.Lock()
	defer p.cmd.Unlock()
	p.mu.RLock()
	rejoined := p.channels[s.ch] != nil // a Subscribe since: keep it
	cn, closed := p.conn, p.closed
	p.mu.RUnlock()
	if rejoined || closed || cn == nil { // no connection: the next one will not subscribe it
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), p.b.timeout)
	defer cancel()
	if err := cn.send(ctx, p.b.unsubscribeKind(), s.ch); err != nil {
		p.b.log.Debug("redis unsubscribe failed; the channel is forgotten anyway", zap.Error(err))
	}
	return nil
}

// Close closes the partitions' pub/sub connections and waits for their
// goroutines; a probe under way ends within HealthTimeout with a client
// that has ContextTimeoutEnabled (ClientOptions sets it), otherwise within
// the client's ReadTimeout. Subscribe calls waiting for a confirmation
// fail with broadcast.ErrBrokerClosed. It does not close the client.
func (b *Broker) Close() error {
	if b.closed.Swap(true) {
		return nil
	}
	for _, p := range b.parts {
		// Subscribe fails from now on, and run dials nothing more.
		p.mu.Lock()
		p.closed = true
		for _, c := range p.channels {
			if !c.ok {
				c.ok, c.err = true, broadcast.ErrBrokerClosed
				close(c.confirmed)
			}
		}
		p.mu.Unlock()
	}
	b.cancel() // each run closes its connection and waits for its reader
	b.wg.Wait()
	return nil
}

var _ broadcast.Monitor = (*Broker)(nil)
