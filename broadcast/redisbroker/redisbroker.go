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
	"maps"
	mrand "math/rand/v2"
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

// partition is one pub/sub connection at a time, its goroutines and its
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

	// cmd serialises the commands sent on conn with the decision to send
	// them (so that a channel left and joined again at once cannot end
	// unsubscribed on the server, and the reader's record of pending
	// commands is in the order they were written), and the replacement
	// of conn.
	cmd sync.Mutex
	// mu guards conn, channels and closed. It is held for reading while
	// handlers run, so an Unsubscribe that returned has no handler
	// running.
	mu       sync.RWMutex
	conn     *conn // nil while the partition has no connection (run is dialling)
	channels map[string]*channel
	closed   bool
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

// Kinds of the (un)subscribe commands, as Redis names their answers.
const (
	kindSubscribe    = "subscribe"
	kindSSubscribe   = "ssubscribe"
	kindUnsubscribe  = "unsubscribe"
	kindSUnsubscribe = "sunsubscribe"
)

// subscribeKind and unsubscribeKind are the commands of b's pub/sub.
func (b *Broker) subscribeKind() string {
	if b.sharded {
		return kindSSubscribe
	}
	return kindSubscribe
}

func (b *Broker) unsubscribeKind() string {
	if b.sharded {
		return kindSUnsubscribe
	}
	return kindUnsubscribe
}

// conn is one pub/sub connection of a partition and its reader goroutine.
//
// The reader is blocked in Receive with no deadline at all: a read
// deadline that fires in the middle of a reply drops the bytes go-redis
// has read of it while keeping the connection, and the next read then
// parses from the middle of a payload, which a publisher controls (a
// forged message on another channel). The reader ends at the first
// connection error, or when run closes the PubSub (stop); it never waits
// for anything but Receive and run. run judges health on its own clock,
// from the reader's events.
type conn struct {
	ps     *redis.PubSub
	events chan event    // reader → run
	broken chan error    // a command's write failed (capacity 1)
	quit   chan struct{} // closed by stop: the reader sends nothing more
	done   chan struct{} // closed when the reader has returned

	// lastRead is when the reader last received anything (UnixNano): a
	// connection still delivering a backlog is slow, not dead.
	lastRead atomic.Int64

	// mu guards pending: the commands written on ps whose answers have
	// not all been read, in the order written (writers hold p.cmd).
	mu      sync.Mutex
	pending []*command
}

// command is an (un)subscribe command written on a conn. Redis answers
// it with one confirmation per channel, in order, or with one error reply
// for the whole command.
type command struct {
	kind string
	chs  []string
	next int // the channel whose confirmation comes next
}

func (c *command) subscribes() bool { return c.kind == kindSubscribe || c.kind == kindSSubscribe }

// event is what a reader tells run.
type event struct {
	kind    eventKind
	payload string   // evProbe
	err     error    // evRefused, evConnErr
	cmd     *command // evRefused: the command Redis refused, nil if none was pending
}

type eventKind int

const (
	evProbe           eventKind = iota // the probe came back
	evProbeSubscribed                  // the probe channel is subscribed: the connection works
	evDropped                          // Redis dropped the probe's subscription (slot moved or unserved)
	evRefused                          // an error reply to a command
	evConnErr                          // the connection failed; the reader has ended
)

func newConn(ps *redis.PubSub) *conn {
	return &conn{
		ps:     ps,
		events: make(chan event, 16),
		broken: make(chan error, 1),
		quit:   make(chan struct{}),
		done:   make(chan struct{}),
	}
}

// send writes an (un)subscribe command for chs, recording it first so
// that the reader can attribute Redis's answer to it. The caller holds
// p.cmd, which keeps the record in the order of the writes. A write that
// fails retires the connection (broken): go-redis may have dialled
// another one under the same PubSub, which the record does not describe.
func (c *conn) send(ctx context.Context, kind string, chs ...string) error {
	c.mu.Lock()
	c.pending = append(c.pending, &command{kind: kind, chs: chs})
	c.mu.Unlock()
	var err error
	switch kind {
	case kindSubscribe:
		err = c.ps.Subscribe(ctx, chs...)
	case kindSSubscribe:
		err = c.ps.SSubscribe(ctx, chs...)
	case kindUnsubscribe:
		err = c.ps.Unsubscribe(ctx, chs...)
	case kindSUnsubscribe:
		err = c.ps.SUnsubscribe(ctx, chs...)
	}
	if err != nil {
		select {
		case c.broken <- err:
		default:
		}
	}
	return err
}

// answered records a confirmation of (kind, ch). One that matches no
// pending command (Redis dropping a sharded channel by itself) changes
// nothing.
func (c *conn) answered(kind, ch string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.pending) == 0 {
		return
	}
	head := c.pending[0]
	if head.kind != kind || head.chs[head.next] != ch {
		return
	}
	if head.next++; head.next == len(head.chs) {
		c.pending[0] = nil
		c.pending = c.pending[1:]
	}
}

// refused removes and returns the command an error reply answers: the
// oldest pending one (Redis answers in order). Nil if none is pending.
func (c *conn) refused() *command {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.pending) == 0 {
		return nil
	}
	head := c.pending[0]
	c.pending[0] = nil
	c.pending = c.pending[1:]
	return head
}

// silentSince returns when c last received anything, or since if later.
func (c *conn) silentSince(since time.Time) time.Time {
	if t := time.Unix(0, c.lastRead.Load()); t.After(since) {
		return t
	}
	return since
}

// stop ends the reader and waits for it: closing the PubSub closes its
// connection, which ends the blocked Receive.
func (c *conn) stop() {
	close(c.quit)
	_ = c.ps.Close()
	<-c.done
}

// read is the reader goroutine of c, owned by run (which waits for it in
// c.stop before dialling another connection or returning). It delivers
// messages and confirms subscriptions itself, so that a backlog of
// messages never waits for run, and tells run what concerns health.
func (p *partition) read(c *conn) {
	defer close(c.done)
	// No deadline: see conn. The context only carries values to go-redis.
	ctx := context.Background()
	for {
		msg, err := c.ps.Receive(ctx)
		if err == nil {
			c.lastRead.Store(time.Now().UnixNano())
		}
		var ev event
		var rerr redis.Error
		switch {
		case err == nil:
			switch m := msg.(type) {
			case *redis.Message:
				if m.Channel != p.probe {
					p.deliver(m)
					continue
				}
				ev = event{kind: evProbe, payload: m.Payload}
			case *redis.Subscription:
				c.answered(m.Kind, m.Channel)
				switch {
				case m.Kind == kindSubscribe || m.Kind == kindSSubscribe:
					if m.Channel != p.probe {
						p.confirm(m.Channel)
						continue
					}
					ev = event{kind: evProbeSubscribed}
				case m.Kind == kindSUnsubscribe && m.Channel == p.probe:
					// The broker never unsubscribes its probe: Redis
					// dropped the slot's subscribers (it moved, or nobody
					// serves it). Every channel of the partition shares the
					// slot, so they all went.
					ev = event{kind: evDropped}
				default:
					continue
				}
			default: // a Pong: the broker sends no PING
				continue
			}
		case errors.As(err, &rerr):
			// An error reply answers a command; the connection is fine.
			ev = event{kind: evRefused, err: err, cmd: c.refused()}
		default:
			ev = event{kind: evConnErr, err: err}
		}
		select {
		case c.events <- ev:
		case <-c.quit:
			return
		}
		if ev.kind == evConnErr {
			return
		}
	}
}

// run is the partition's goroutine: it dials the pub/sub connection (one
// at a time, each with its reader), sends the probes, judges the
// partition's health from the reader's events on its own clock (never a
// read deadline), and replaces the connection when it fails or stops
// carrying messages. It returns once ctx is cancelled, after its reader
// and its probe's publish have ended.
func (p *partition) run(ctx context.Context) {
	b := p.b
	defer b.wg.Done()
	const minBackoff, maxBackoff = 50 * time.Millisecond, time.Second
	var (
		c           *conn     // the current connection; nil while none
		subscribed  bool      // the probe channel is confirmed on c
		attemptAt   time.Time // when c was dialled
		seq         uint64    // the last probe sent
		outstanding bool      // it has not come back yet
		sentAt      time.Time
		publishing  bool      // its publish has not returned yet
		accepted    bool      // its publish succeeded
		late        bool      // it is outstanding past HealthTimeout behind a backlog
		nextProbe   time.Time // zero: as soon as subscribed
		backoff     time.Duration
	)
	// The probe's publish runs on a goroutine of its own, owned by run,
	// which waits for it before returning: go-redis bounds it by the
	// client's timeouts, not by a context (unless ContextTimeoutEnabled),
	// and the probe must be judged HealthTimeout after it was sent.
	results := make(chan probeResult, 1)
	defer func() {
		if c != nil {
			p.detach()
			c.stop()
		}
		if publishing {
			<-results
		}
	}()
	// grow returns the next delay after a failure: doubling, capped.
	grow := func() time.Duration {
		backoff = min(max(2*backoff, minBackoff), maxBackoff)
		return backoff
	}
	// replace retires c, if any, and dials a new connection after a
	// jittered wait (many partitions may fail at once). It returns false
	// once ctx is cancelled.
	replace := func(wait time.Duration) bool {
		subscribed, outstanding, late = false, false, false
		if c != nil {
			p.detach()
			c.stop()
			c = nil
			if cc, ok := b.client.(*redis.ClusterClient); ok {
				cc.ReloadState(ctx) // lazily, meanwhile: the slot may have moved
			}
		}
		if wait > 0 && !sleep(ctx, wait/2+mrand.N(wait/2+1)) {
			return false
		}
		var err error
		c, err = p.dial(ctx)
		attemptAt = time.Now()
		if err != nil && ctx.Err() == nil {
			b.log.Debug("redis pub/sub connection failed; retrying", zap.String("part", p.name), zap.Error(err))
			p.setState(false, wrapConnErr(err))
		}
		return ctx.Err() == nil
	}
	// failed reports the partition down and replaces its connection.
	failed := func(err error) bool {
		p.setState(false, err)
		return replace(grow())
	}

	if !replace(0) {
		return
	}
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		if c == nil { // the last dial failed
			if !replace(grow()) {
				return
			}
			continue
		}
		var due time.Time
		timed := true
		switch {
		case outstanding:
			due = sentAt.Add(b.timeout)
			if late {
				due = c.silentSince(sentAt).Add(b.timeout)
			}
		case subscribed && publishing:
			// A late publish of a lost probe: nothing to judge until it
			// returns (results).
			timed = false
		case subscribed:
			due = nextProbe
		default:
			due = attemptAt.Add(b.timeout)
		}
		var wake <-chan time.Time
		if timed {
			timer.Reset(max(time.Until(due), 0))
			wake = timer.C
		}
		ok := true
		select {
		case <-ctx.Done():
			return
		case ev := <-c.events:
			switch ev.kind {
			case evProbe:
				if outstanding && ev.payload == strconv.FormatUint(seq, 10) {
					outstanding, late, backoff = false, false, 0
					nextProbe = sentAt.Add(b.interval)
					p.setState(true, nil)
				}
			case evProbeSubscribed:
				// Only a probe shows that the connection carries
				// messages: probe it at once.
				subscribed, outstanding, late, nextProbe = true, false, false, time.Time{}
			case evDropped:
				ok = failed(errDropped)
			case evRefused:
				if !p.refusal(ctx, c, ev.cmd, ev.err) {
					ok = failed(ev.err)
				}
			case evConnErr:
				b.log.Debug("redis pub/sub connection failed; replacing it", zap.String("part", p.name), zap.Error(ev.err))
				ok = failed(wrapConnErr(ev.err))
			}
		case err := <-c.broken:
			b.log.Debug("redis pub/sub write failed; replacing the connection", zap.String("part", p.name), zap.Error(err))
			ok = failed(wrapConnErr(err))
		case r := <-results:
			publishing = false
			switch {
			case r.seq != seq || !outstanding:
				// Late: the probe was judged already.
			case r.err != nil:
				// Redis did not take it: unreachable or stalled. The
				// connection is not to blame; probe again soon.
				outstanding, late = false, false
				p.setState(false, wrapConnErr(r.err))
				nextProbe = time.Now().Add(grow())
			case r.n == 0 && b.counted:
				// Redis has no subscriber on the probe channel: this
				// connection's subscriptions are gone.
				ok = failed(errNoSubscribe)
			default:
				accepted = true
			}
		case <-wake:
		}
		if !ok {
			return
		}
		if c == nil {
			continue
		}

		now := time.Now()
		switch {
		case outstanding && !now.Before(sentAt.Add(b.timeout)):
			if !accepted {
				// Its publish has not returned or failed: the server
				// answers nobody (stalled, frozen, unreachable). It keeps
				// its subscribers; probe again once the publish returns.
				outstanding = false
				p.setState(false, errProbeLost)
				nextProbe = now.Add(grow())
				break
			}
			if now.Before(c.silentSince(sentAt).Add(b.timeout)) {
				// Redis took the probe and the connection still
				// delivers: the probe is queued behind a backlog.
				// Messages are that late, so the partition is down, but
				// replacing the connection would lose the backlog; the
				// probe's arrival brings it up.
				late = true
				p.setState(false, errProbeLate)
				break
			}
			// Redis took the probe but this connection has carried
			// nothing for HealthTimeout since: it no longer carries
			// messages (a black-holed route).
			if !failed(errProbeLost) {
				return
			}
		case !subscribed && !now.Before(attemptAt.Add(b.timeout)):
			if !failed(errUnconfirmed) {
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

// dial opens a new pub/sub connection subscribed to every channel of the
// partition and its probe, in one command, makes it the partition's and
// starts its reader. In a cluster, go-redis dials the owner of the
// partition's slot (or a replica with ReadOnly). The probe's
// confirmation, then a probe, bring the partition up (run). On failure
// nothing is left open.
func (p *partition) dial(ctx context.Context) (*conn, error) {
	b := p.b
	c := newConn(b.newPubSub())
	p.cmd.Lock()
	defer p.cmd.Unlock()
	p.mu.Lock()
	closed := p.closed
	chs := append(slices.Collect(maps.Keys(p.channels)), p.probe)
	p.mu.Unlock()
	if closed {
		_ = c.ps.Close()
		return nil, broadcast.ErrBrokerClosed
	}
	sctx, cancel := context.WithTimeout(ctx, b.timeout)
	err := c.send(sctx, b.subscribeKind(), chs...)
	cancel()
	if err != nil {
		_ = c.ps.Close()
		return nil, err
	}
	p.mu.Lock()
	p.conn = c
	p.mu.Unlock()
	go p.read(c) // owned by run: it stops c and waits before dialling again or returning
	return c, nil
}

// detach makes the partition connectionless, so that no command is sent
// on its current connection any more (under cmd: none is being sent).
func (p *partition) detach() {
	p.cmd.Lock()
	p.mu.Lock()
	p.conn = nil
	p.mu.Unlock()
	p.cmd.Unlock()
}

// refusal handles Redis's error reply to cmd, written on c. It returns
// false when the reply concerns the partition rather than channels (a
// slot moved or unserved, the probe refused, nothing pending): the
// connection must be replaced. Otherwise the connection stays: a refused
// subscription fails its Subscribe calls with err and the channel is
// forgotten (not sent again on a new connection); a refused command of
// several channels (a new connection's, where Redis refuses the whole
// command for one channel, e.g. NOPERM) is sent again one channel per
// command, so that the next refusal names its channel.
func (p *partition) refusal(ctx context.Context, c *conn, cmd *command, err error) bool {
	if cmd == nil || slotError(err) {
		return false
	}
	if !cmd.subscribes() {
		// An unsubscribe refused: the channel is forgotten anyway.
		p.b.log.Debug("redis refused an unsubscribe", zap.String("part", p.name), zap.Error(err))
		return true
	}
	if len(cmd.chs) == 1 {
		if cmd.chs[0] == p.probe {
			return false
		}
		p.reject(cmd.chs[0], err)
		return true
	}
	sctx, cancel := context.WithTimeout(ctx, p.b.timeout)
	defer cancel()
	p.cmd.Lock()
	defer p.cmd.Unlock()
	for _, ch := range cmd.chs {
		p.mu.RLock()
		wanted := ch == p.probe || p.channels[ch] != nil
		p.mu.RUnlock()
		if !wanted {
			continue // left meanwhile
		}
		if c.send(sctx, cmd.kind, ch) != nil {
			break // broken: run replaces c
		}
	}
	return true
}

// slotError reports an error reply that concerns the partition's slot or
// server rather than a channel: the connection is to be replaced.
func slotError(err error) bool {
	msg := err.Error()
	for _, prefix := range []string{"MOVED ", "ASK ", "CLUSTERDOWN ", "TRYAGAIN ", "MASTERDOWN ", "LOADING ", "READONLY ", "CROSSSLOT "} {
		if strings.HasPrefix(msg, prefix) {
			return true
		}
	}
	return false
}

// reject forgets ch after Redis refused to subscribe it: its pending
// Subscribe calls fail with err. A channel that was subscribed before (a
// permission revoked since) loses its subscribers, which are not told
// (broadcast.Subscription has no way to): that is logged at Warn.
func (p *partition) reject(ch string, err error) {
	p.mu.Lock()
	c := p.channels[ch]
	if c == nil {
		p.mu.Unlock()
		return
	}
	delete(p.channels, ch)
	wasOK := c.ok
	if !c.ok {
		c.ok, c.err = true, err
		close(c.confirmed)
	}
	p.mu.Unlock()
	if wasOK {
		p.b.log.Warn("redis refused a channel the broker had subscribed; its subscribers receive nothing more",
			zap.String("part", p.name), zap.String("channel", ch), zap.Error(err))
	}
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
