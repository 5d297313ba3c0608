// Package redisbroker is a broadcast.Broker on Redis pub/sub (go-redis v9).
//
// # Partitions
//
// Topics are spread over Options.Partitions partitions (16 by default):
// topic t belongs to partition FNV-1a-32(t) mod Partitions, the 32-bit
// FNV-1a hash of the topic's bytes (Partition computes it). Each partition
// is one pub/sub connection read by one goroutine, carrying all of its
// topics' channels, so a broker holds Partitions connections however many
// topics it serves.
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
// connection by its first channel.
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
// within HealthInterval + HealthTimeout. A partition is up again once a
// probe went through after the failure. Broker.Health has one part per
// partition ("partition 07"); Publish to a topic whose partition is down
// fails at once with broadcast.ErrBrokerUnavailable, while the other
// partitions keep working. New settles the initial state, so a broker
// created while Redis is down reports down.
//
// Recovery: go-redis redials and resubscribes after a connection error;
// the broker replaces a partition's connection itself (a new one,
// subscribed to the same channels, on the slot's current owner) when
// Redis dropped its subscriptions or refused one (MOVED, CLUSTERDOWN),
// when its subscription is not confirmed within HealthTimeout, or when a
// probe that Redis accepted never arrived (a black-holed route). A server
// that answers nobody (a long script, SIGSTOP) keeps its subscribers: the
// partition stays down until a probe gets through again.
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
	"maps"
	mrand "math/rand/v2"
	"net"
	"slices"
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

	// minHealth is the shortest HealthInterval and HealthTimeout: the
	// receive goroutine reads for at least minRead at a time.
	minHealth = 20 * time.Millisecond
	// minRead bounds how short a read with a deadline may be: one that
	// times out in the middle of a reply loses the connection.
	minRead = 10 * time.Millisecond
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
// Goroutines: each partition has one receive goroutine, started by New and
// owned by the broker, and, while a probe's publish is under way, one for
// that publish, owned by the receive goroutine, which waits for it before
// it ends. Close stops them all and waits.
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

	cancel context.CancelFunc // stops every receive goroutine
	wg     sync.WaitGroup     // the receive goroutines
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

// partition is one pub/sub connection, its receive goroutine and its
// health.
type partition struct {
	b     *Broker
	name  string // "partition 07": sorts by number
	tag   string // sharded: "{<prefix><n>}", the start of every channel; else ""
	route string // "{<prefix><n>}": with ClassicPublish, publishes go to its slot's master
	probe string // the control channel of this broker's probes

	// down mirrors !up for Publish, without a lock.
	down atomic.Bool

	// Guarded by b.stateMu.
	up      bool
	since   time.Time
	err     error
	warned  bool          // a Warn was logged for the current outage
	settled chan struct{} // closed at the first verdict (see settle)
	settle  sync.Once

	// cmd serialises the SUBSCRIBE and UNSUBSCRIBE commands sent on ps
	// with the decision to send them (so that a channel left and joined
	// again at once cannot end unsubscribed on the server), and the
	// replacement of ps.
	cmd sync.Mutex
	// mu guards ps, channels and closed. It is held for reading while
	// handlers run, so an Unsubscribe that returned has no handler
	// running.
	mu       sync.RWMutex
	ps       *redis.PubSub
	channels map[string]*channel
	closed   bool
}

type channel struct {
	subs      map[*subscription]func([]byte)
	confirmed chan struct{} // closed at the first confirmation
	ok        bool
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
	errNoSubscribe = errors.New("probe reached no subscriber: the partition's subscription is gone")
	errUnconfirmed = errors.New("subscription not confirmed within HealthTimeout")
	errDropped     = errors.New("redis dropped the partition's subscriptions (slot moved or unserved)")
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
	// Classic PUBLISH on a cluster counts only the subscribers of the node
	// that took it, not those of the node the partition listens on.
	b.counted = b.classic == nil
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
		p.ps = b.newPubSub()
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

// subscribe sends (S)SUBSCRIBE for chs on ps.
func (b *Broker) subscribe(ctx context.Context, ps *redis.PubSub, chs ...string) error {
	if b.sharded {
		return ps.SSubscribe(ctx, chs...)
	}
	return ps.Subscribe(ctx, chs...)
}

// Partition returns the partition of topic: the 32-bit FNV-1a hash of its
// bytes, modulo the number of partitions.
func (b *Broker) Partition(topic string) int {
	h := fnv.New32a()
	_, _ = h.Write([]byte(topic))
	return int(h.Sum32() % uint32(len(b.parts)))
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

// run is the partition's receive goroutine: it reads the pub/sub
// connection until ctx is cancelled, delivers messages, confirms
// subscriptions, sends the probe and judges the partition's health. go-redis
// redials and resubscribes on the next read after a connection error; run
// replaces the connection in the cases go-redis does not see (redial).
func (p *partition) run(ctx context.Context) {
	b := p.b
	defer b.wg.Done()
	const minBackoff, maxBackoff = 50 * time.Millisecond, time.Second
	var (
		subscribed  bool      // the probe channel is confirmed on the current connection
		attemptAt   time.Time // when the current connection's subscription was sent
		seq         uint64    // the last probe sent
		outstanding bool      // it has not come back yet
		sentAt      time.Time
		publishing  bool      // its publish has not returned yet
		accepted    bool      // its publish succeeded
		nextProbe   time.Time // zero: as soon as subscribed
		backoff     time.Duration
	)
	// The probe's publish runs on a goroutine of its own, owned by run,
	// which waits for it before returning: go-redis bounds it by the
	// client's timeouts, not by a context (unless ContextTimeoutEnabled),
	// and the probe must be judged HealthTimeout after it was sent.
	results := make(chan probeResult, 1)
	defer func() {
		if publishing {
			<-results
		}
	}()
	// grow returns the next delay after a failure: doubling, capped.
	grow := func() time.Duration {
		backoff = min(max(2*backoff, minBackoff), maxBackoff)
		return backoff
	}
	// reset forgets the current connection's progress; the next one is
	// judged from now.
	reset := func() {
		subscribed, outstanding, attemptAt = false, false, time.Now()
	}
	// redial replaces the connection after a growing delay; the new one's
	// HealthTimeout starts once it is subscribed, not before the delay.
	redial := func() bool {
		reset()
		ok := p.redial(ctx, grow())
		attemptAt = time.Now()
		return ok
	}

	p.cmd.Lock()
	err := b.subscribe(ctx, p.ps, p.probe)
	p.cmd.Unlock()
	attemptAt = time.Now()
	if err != nil { // go-redis remembers the channel and subscribes on its next dial
		p.setState(false, wrapConnErr(err))
		if !sleep(ctx, grow()) {
			return
		}
	}
	for {
		now := time.Now()
		var due time.Time
		switch {
		case outstanding:
			due = sentAt.Add(b.timeout)
		case subscribed && publishing:
			due = now.Add(b.timeout) // a late publish of a lost probe: nothing to judge
		case subscribed:
			due = nextProbe
		default:
			due = attemptAt.Add(b.timeout)
		}
		wait := max(due.Sub(now), minRead)
		p.mu.RLock()
		ps := p.ps
		p.mu.RUnlock()
		msg, err := ps.ReceiveTimeout(ctx, wait)
		if ctx.Err() != nil {
			return
		}
		var rerr redis.Error
		switch {
		case err == nil:
			switch m := msg.(type) {
			case *redis.Message:
				if m.Channel == p.probe {
					if outstanding && m.Payload == strconv.FormatUint(seq, 10) {
						outstanding, backoff = false, 0
						nextProbe = sentAt.Add(b.interval)
						p.setState(true, nil)
					}
					break
				}
				p.deliver(m)
			case *redis.Subscription:
				switch {
				case m.Channel == p.probe && (m.Kind == "subscribe" || m.Kind == "ssubscribe"):
					// A new connection (go-redis's or redial's): probe it
					// at once, since only a probe shows it works.
					subscribed, outstanding, nextProbe = true, false, time.Time{}
				case m.Kind == "subscribe" || m.Kind == "ssubscribe":
					p.confirm(m.Channel)
				case m.Channel == p.probe && m.Kind == "sunsubscribe":
					// The broker never unsubscribes its probe: Redis
					// dropped the slot's subscribers (it moved, or nobody
					// serves it). Every channel of the partition shares the
					// slot, so they all went.
					p.setState(false, errDropped)
					if !redial() {
						return
					}
				}
			}
		case isTimeout(err):
		case errors.As(err, &rerr):
			// An error reply on a pub/sub connection refuses a
			// subscription: MOVED (the slot moved before go-redis knew),
			// CLUSTERDOWN (nobody serves it).
			p.setState(false, err)
			if !redial() {
				return
			}
		default:
			// A connection error: go-redis has closed the connection and
			// dials again on the next read. Logged per attempt at Debug
			// only: setState logs the change once.
			b.log.Debug("redis pub/sub connection failed; retrying", zap.String("part", p.name), zap.Error(err))
			p.setState(false, wrapConnErr(err))
			reset()
			if !sleep(ctx, grow()) {
				return
			}
			attemptAt = time.Now()
		}

		if publishing {
			select {
			case r := <-results:
				publishing = false
				switch {
				case r.seq != seq || !outstanding:
					// Late: the probe was judged already.
				case r.err != nil:
					// Redis did not take it: unreachable or stalled. The
					// connection is not to blame; probe again soon.
					outstanding = false
					p.setState(false, wrapConnErr(r.err))
					nextProbe = time.Now().Add(grow())
				case r.n == 0 && b.counted:
					// Redis has no subscriber on the probe channel: this
					// connection's subscriptions are gone.
					p.setState(false, errNoSubscribe)
					if !redial() {
						return
					}
				default:
					accepted = true
				}
			default:
			}
		}

		now = time.Now()
		switch {
		case outstanding && !now.Before(sentAt.Add(b.timeout)):
			outstanding = false
			if !accepted {
				// Its publish has not returned or failed: the server
				// answers nobody (stalled, frozen, unreachable). It keeps
				// its subscribers; probe again once the publish returns.
				p.setState(false, errProbeLost)
				nextProbe = now.Add(grow())
				break
			}
			// Redis took the probe but it never came back on this
			// connection: the connection no longer carries messages.
			p.setState(false, errProbeLost)
			if !redial() {
				return
			}
		case !subscribed && !now.Before(attemptAt.Add(b.timeout)):
			p.setState(false, errUnconfirmed)
			if !redial() {
				return
			}
		case subscribed && !outstanding && !publishing && !now.Before(nextProbe):
			seq++
			sentAt, outstanding, publishing, accepted = now, true, true, false
			// Owned by run, which receives its result before returning.
			go p.publishProbe(ctx, seq, results)
		}
	}
}

// probeResult is the outcome of a probe's publish.
type probeResult struct {
	seq uint64
	n   int64 // subscribers that received it
	err error
}

// publishProbe publishes probe seq through the client's pool, as Publish
// does, and sends the outcome to results.
func (p *partition) publishProbe(ctx context.Context, seq uint64, results chan<- probeResult) {
	b := p.b
	ctx, cancel := context.WithTimeout(ctx, b.timeout)
	defer cancel()
	var r probeResult
	r.seq = seq
	r.n, r.err = p.publish(ctx, p.probe, seq)
	results <- r
}

// publish sends payload to ch, as the partition's topics are published:
// SPUBLISH when sharded; PUBLISH otherwise, through the master of the
// route's slot with ClassicPublish (go-redis would pick a random node for
// each PUBLISH, and the cluster bus would then deliver one publisher's
// messages out of order). It returns the receivers Redis counted.
func (p *partition) publish(ctx context.Context, ch string, payload any) (int64, error) {
	b := p.b
	switch {
	case b.sharded:
		return b.client.SPublish(ctx, ch, payload).Result()
	case b.classic != nil:
		node, err := b.classic.MasterForKey(ctx, p.route)
		if err != nil {
			return 0, err
		}
		return node.Publish(ctx, ch, payload).Result()
	default:
		return b.client.Publish(ctx, ch, payload).Result()
	}
}

// sleep waits for d, or returns false once ctx is cancelled.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// wrapConnErr marks an error that is not Redis's own reply as the server
// being unavailable.
func wrapConnErr(err error) error {
	var rerr redis.Error
	if errors.As(err, &rerr) {
		return err
	}
	return fmt.Errorf("%w: %w", broadcast.ErrBrokerUnavailable, err)
}

// deliver calls the handlers of m's channel.
func (p *partition) deliver(m *redis.Message) {
	payload := []byte(m.Payload)
	p.mu.RLock()
	defer p.mu.RUnlock()
	if c := p.channels[m.Channel]; c != nil {
		for _, h := range c.subs {
			h(payload)
		}
	}
}

// confirm wakes the Subscribe calls waiting for ch.
func (p *partition) confirm(ch string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if c := p.channels[ch]; c != nil && !c.ok {
		c.ok = true
		close(c.confirmed)
	}
}

// redial replaces the partition's pub/sub connection, after a jittered
// wait (many partitions may fail at once), with a new one subscribed to
// the probe and every channel: in a cluster, go-redis dials the slot's
// current owner, from its cluster state reloaded first. The probe's
// confirmation, then a probe, bring the partition up (run). It returns
// false once ctx is cancelled.
func (p *partition) redial(ctx context.Context, wait time.Duration) bool {
	b := p.b
	if cc, ok := b.client.(*redis.ClusterClient); ok {
		cc.ReloadState(ctx) // lazily, meanwhile
	}
	if !sleep(ctx, wait/2+mrand.N(wait/2+1)) {
		return false
	}
	p.cmd.Lock()
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		p.cmd.Unlock()
		return false
	}
	old := p.ps
	p.ps = b.newPubSub()
	chs := append(slices.Collect(maps.Keys(p.channels)), p.probe)
	ps := p.ps
	p.mu.Unlock()
	_ = old.Close()
	sctx, cancel := context.WithTimeout(ctx, b.timeout)
	// On failure, go-redis keeps the channels and subscribes them when
	// run's next read dials.
	err := b.subscribe(sctx, ps, chs...)
	cancel()
	p.cmd.Unlock()
	if err != nil {
		b.log.Debug("redis subscribe on a new connection failed; retrying", zap.String("part", p.name), zap.Error(err))
	}
	return ctx.Err() == nil
}

// setState records the partition's verdict and, on a change, logs it and
// tells the listeners, in the order of the changes (notifyMu). The reason
// of an outage is its first one.
func (p *partition) setState(up bool, err error) {
	b := p.b
	b.notifyMu.Lock()
	defer b.notifyMu.Unlock()
	b.stateMu.Lock()
	defer p.settle.Do(func() { close(p.settled) })
	if p.up == up {
		if !up && p.err == errStarting {
			p.err = err
		}
		b.stateMu.Unlock()
		return
	}
	p.up, p.since = up, time.Now()
	p.err = err
	p.down.Store(!up)
	var warn, info bool
	if b.started {
		warn = !up
		info = up && p.warned
		p.warned = !up
	}
	var fs []func(broadcast.Health)
	var h broadcast.Health
	if !b.closed.Load() && len(b.listeners) > 0 {
		h = b.healthLocked()
		for _, id := range slices.Sorted(maps.Keys(b.listeners)) {
			fs = append(fs, b.listeners[id])
		}
	}
	b.stateMu.Unlock()
	switch {
	case warn:
		b.log.Warn("redis broker partition down", zap.String("part", p.name), zap.Error(err))
	case info:
		b.log.Info("redis broker partition back", zap.String("part", p.name))
	}
	for _, f := range fs {
		f(h)
	}
}

func (p *partition) errNow() error {
	p.b.stateMu.Lock()
	defer p.b.stateMu.Unlock()
	return p.err
}

// Health implements broadcast.Monitor: one part per partition, sorted by
// name.
func (b *Broker) Health() broadcast.Health {
	b.stateMu.Lock()
	defer b.stateMu.Unlock()
	return b.healthLocked()
}

func (b *Broker) healthLocked() broadcast.Health {
	h := broadcast.Health{Up: true, Parts: make([]broadcast.PartHealth, len(b.parts))}
	for i, p := range b.parts {
		h.Parts[i] = broadcast.PartHealth{Name: p.name, Up: p.up, Since: p.since, Err: p.err}
		h.Up = h.Up && p.up
	}
	return h
}

// NotifyHealth implements broadcast.Monitor. f runs synchronously on the
// receive goroutine of the partition that changed, after each change, in
// order; it must not block and must not call the broker.
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

// Subscribe calls h with every message published to topic. It returns once
// Redis has confirmed the subscription.
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
		ps := p.ps
		p.mu.RUnlock()
		err = b.subscribe(ctx, ps, ch)
		p.cmd.Unlock()
		if err != nil {
			_ = s.Unsubscribe()
			if b.closed.Load() {
				return nil, fmt.Errorf("redisbroker: subscribe: %w", broadcast.ErrBrokerClosed)
			}
			return nil, fmt.Errorf("redisbroker: subscribe: %w", wrap(err))
		}
	}
	select {
	case <-c.confirmed:
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
	ps, closed := p.ps, p.closed
	p.mu.RUnlock()
	if rejoined || closed {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), p.b.timeout)
	defer cancel()
	var err error
	if p.b.sharded {
		err = ps.SUnsubscribe(ctx, s.ch)
	} else {
		err = ps.Unsubscribe(ctx, s.ch)
	}
	if err != nil {
		p.b.log.Debug("redis unsubscribe failed; the channel is forgotten anyway", zap.Error(err))
	}
	return nil
}

// Close closes the partitions' pub/sub connections and waits for their
// goroutines; a probe under way ends within HealthTimeout. It does not
// close the client.
func (b *Broker) Close() error {
	if b.closed.Swap(true) {
		return nil
	}
	b.cancel()
	for _, p := range b.parts {
		// Under cmd, so that no redial swaps in a connection after this.
		p.cmd.Lock()
		p.mu.Lock()
		p.closed = true
		ps := p.ps
		p.mu.Unlock()
		p.cmd.Unlock()
		_ = ps.Close()
	}
	b.wg.Wait()
	return nil
}
