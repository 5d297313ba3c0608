// Package redisbroker is a broadcast.Broker on Redis pub/sub (go-redis v9).
// A *redis.Client uses PUBLISH and SUBSCRIBE on one pub/sub connection for
// every topic; a *redis.ClusterClient uses sharded pub/sub (SPUBLISH and
// SSUBSCRIBE, Redis 7), so each message goes only to the shard that owns
// its channel, with one pub/sub connection per topic to that shard.
//
// Redis pub/sub delivers at most once and keeps one publisher's messages
// in order, as long as go-redis does not retry a PUBLISH whose reply was
// lost: give the client MaxRetries: -1 (go-redis retries three times by
// default) and short dial and read timeouts, which also bound how long a
// Publish takes before the broker has noticed an outage. go-redis restores
// the subscriptions after a reconnect; the broker notices the outage
// within two HealthIntervals, fails Publish at once meanwhile, and reports
// both edges (broadcast.StateNotifier).
//
// When a sharded channel's slot moves to another master, or nobody serves
// it, Redis drops its subscribers (a server-side SUNSUBSCRIBE): the broker
// reports itself down, subscribes again on a new connection to the slot's
// owner until Redis confirms, and only then reports itself up. Meanwhile,
// as in any outage, Publish fails for every topic and messages to the
// moved topic are lost.
//
// A pub/sub connection that stops answering without an error (a
// black-holed route) is reported down when a ping goes unanswered for a
// HealthInterval, and replaced by a new one subscribed to the same
// channels if it stays silent for another interval after the server
// answered on another connection; a stalled server keeps its subscribers.
//
// Known limit: sharded pub/sub opens one connection per topic. See
// docs/broadcast.md.
package redisbroker

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"net"
	"slices"
	"sync"
	"time"

	"github.com/chiws/chiws/broadcast"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
)

// Defaults for Options.
const (
	DefaultChannelPrefix  = "chiws.broadcast."
	DefaultHealthInterval = 5 * time.Second
)

// Options configures a Broker.
type Options struct {
	// ChannelPrefix is prepended to every topic to make its Redis
	// channel, so that several applications can share a Redis. Empty
	// means DefaultChannelPrefix.
	ChannelPrefix string

	// Sharded uses sharded pub/sub (SPUBLISH, SSUBSCRIBE; Redis 7 or
	// later) with a *redis.Client too. It is always on for a
	// *redis.ClusterClient, where plain PUBLISH would reach every node.
	Sharded bool

	// HealthInterval is how long a pub/sub connection may stay silent
	// before the broker pings it; a ping left unanswered for another
	// interval reports the broker down and replaces the connection. Zero
	// means DefaultHealthInterval.
	HealthInterval time.Duration

	// Logger receives connection changes. Nil means no logs.
	Logger *zap.Logger
}

// Broker is a broadcast.Broker on Redis pub/sub. It also implements
// broadcast.StateNotifier.
//
// Goroutines: each pub/sub connection has one receive goroutine, owned by
// the broker; Close (or the last Unsubscribe of a sharded topic) stops it
// and waits.
type Broker struct {
	client  redis.UniversalClient
	prefix  string
	sharded bool
	health  time.Duration
	log     *zap.Logger

	// mu guards everything below and the channels of every psConn. It is
	// held for reading while handlers run, so an Unsubscribe that
	// returned has no handler running.
	mu      sync.RWMutex
	shared  *psConn            // unsharded: every channel
	conns   map[string]*psConn // sharded: one per channel
	failing int                // connections currently failing
	notify  map[int]func(up bool)
	nextID  int
	closed  bool

	notifyMu sync.Mutex // serialises state changes and their callbacks
}

// psConn is one pub/sub connection and its receive goroutine.
type psConn struct {
	// ps is replaced, under Broker.mu and cmd, only by the receive
	// goroutine (see redial).
	ps *redis.PubSub
	// cmd serialises the SUBSCRIBE and UNSUBSCRIBE commands sent on ps
	// with the decision to send them, so that a channel left and joined
	// again at once cannot end unsubscribed on the server.
	cmd      sync.Mutex
	channels map[string]*channel
	failing  bool // written under mu, by the receive goroutine while it runs
	// resubscribing is set while pc's channels are being subscribed again
	// on a new connection (see redial), and wait is the delay before the
	// next attempt; only the receive goroutine uses them.
	resubscribing bool
	wait          time.Duration
	cancel        context.CancelFunc // nil until start
	done          chan struct{}      // closed when the receive goroutine ends
}

type channel struct {
	subs      map[*subscription]func([]byte)
	confirmed chan struct{} // closed at the first confirmation
	ok        bool
}

type subscription struct {
	b  *Broker
	pc *psConn
	ch string
}

// New returns a broker on client, which it does not own: close the client
// after the broker. For an unsharded client it opens the pub/sub
// connection and starts its receive goroutine now.
func New(client redis.UniversalClient, opts Options) (*Broker, error) {
	if client == nil {
		return nil, errors.New("redisbroker: nil client")
	}
	if opts.HealthInterval < 0 {
		return nil, fmt.Errorf("redisbroker: HealthInterval must not be negative, got %v", opts.HealthInterval)
	}
	b := &Broker{
		client:  client,
		prefix:  opts.ChannelPrefix,
		sharded: opts.Sharded,
		health:  opts.HealthInterval,
		log:     opts.Logger,
		conns:   make(map[string]*psConn),
		notify:  make(map[int]func(bool)),
	}
	if _, ok := client.(*redis.ClusterClient); ok {
		b.sharded = true
	}
	if b.prefix == "" {
		b.prefix = DefaultChannelPrefix
	}
	if b.health == 0 {
		b.health = DefaultHealthInterval
	}
	if b.log == nil {
		b.log = zap.NewNop()
	}
	if !b.sharded {
		b.shared = newConn(client.Subscribe(context.Background()))
		b.start(b.shared) // cannot fail: the broker is new
	}
	return b, nil
}

func newConn(ps *redis.PubSub) *psConn {
	return &psConn{ps: ps, channels: make(map[string]*channel), done: make(chan struct{})}
}

// start starts pc's receive goroutine. A sharded connection starts only
// once its first SSUBSCRIBE has made go-redis dial the shard that owns the
// channel: a read before that would dial a random node.
func (b *Broker) start(pc *psConn) bool {
	ctx, cancel := context.WithCancel(context.Background())
	b.mu.Lock()
	if b.closed || (b.sharded && !slices.Contains(slices.Collect(maps.Values(b.conns)), pc)) {
		// Closed, or its channel left, while the first SSUBSCRIBE was
		// under way: closeConn has not seen a goroutine to stop.
		b.mu.Unlock()
		cancel()
		_ = pc.ps.Close()
		return false
	}
	pc.cancel = cancel
	b.mu.Unlock()
	// Owned by the broker: stopped by cancel and ps.Close in closeConn,
	// which waits for done.
	go b.receive(ctx, pc)
	return true
}

func (b *Broker) closeConn(pc *psConn) {
	b.mu.Lock()
	cancel := pc.cancel
	b.mu.Unlock()
	if cancel == nil { // never started
		_ = pc.ps.Close()
		return
	}
	cancel()
	b.mu.Lock()
	ps := pc.ps // after cancel, redial replaces it no more
	b.mu.Unlock()
	_ = ps.Close()
	<-pc.done
	b.setFailing(pc, false)
}

// receive reads pc's connection until ctx is cancelled: messages go to the
// handlers, confirmations wake Subscribe, errors mark the broker down
// until the connection works again. go-redis redials and resubscribes on
// the next call after an error.
func (b *Broker) receive(ctx context.Context, pc *psConn) {
	defer close(pc.done)
	const minBackoff, maxBackoff = 50 * time.Millisecond, time.Second
	backoff := minBackoff
	pinged := false   // a ping is unanswered
	answered := false // meanwhile, the server answered on another connection
	for {
		msg, err := pc.ps.ReceiveTimeout(ctx, b.health)
		if ctx.Err() != nil {
			return
		}
		if b.moved(pc, msg, err) {
			if !b.redial(ctx, pc, "sharded channel lost its shard") {
				return
			}
			continue
		}
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				if pinged { // the last ping was not answered
					b.fail(pc, errors.New("ping not answered"))
					// The connection is replaced only if it stays
					// silent for an interval after the server answered
					// on another one: its route is dead. A stalled
					// server (a long script) answers nobody, and its
					// pongs may still be on their way when it wakes.
					switch {
					case answered:
						if !b.redial(ctx, pc, "ping not answered") {
							return
						}
						pinged, answered = false, false
						continue
					case b.serverAnswers(ctx):
						answered = true
					}
				}
				pinged = true
				if perr := pc.ps.Ping(ctx); perr == nil {
					continue
				} else {
					err = perr
				}
			}
			b.fail(pc, err)
			// Wait, then ping: that redials, resubscribes every channel
			// and, once answered, brings a message to the loop.
			for {
				t := time.NewTimer(backoff)
				select {
				case <-ctx.Done():
					t.Stop()
					return
				case <-t.C:
				}
				backoff = min(2*backoff, maxBackoff)
				if pc.ps.Ping(ctx) == nil {
					break
				}
			}
			continue
		}
		pinged, answered = false, false
		backoff = minBackoff
		s, confirmed := msg.(*redis.Subscription)
		confirmed = confirmed && (s.Kind == "subscribe" || s.Kind == "ssubscribe")
		// pc.failing is written only by this goroutine while it runs, so
		// it is read here without mu. After a resubscription, only Redis's
		// confirmation (not a pong) says the channel is subscribed again.
		if pc.failing && (!pc.resubscribing || confirmed) {
			pc.resubscribing, pc.wait = false, 0
			b.setFailing(pc, false)
		}
		if confirmed {
			b.mu.Lock()
			if c := pc.channels[s.Channel]; c != nil && !c.ok {
				c.ok = true
				close(c.confirmed)
			}
			b.mu.Unlock()
		}
		if m, ok := msg.(*redis.Message); ok {
			p := []byte(m.Payload)
			b.mu.RLock()
			if c := pc.channels[m.Channel]; c != nil {
				for _, h := range c.subs {
					h(p)
				}
			}
			b.mu.RUnlock()
		}
	}
}

// moved reports whether a sharded connection lost its channel: Redis
// unsubscribed it (a server-side SUNSUBSCRIBE when its slot moved or went
// unserved: the broker never sends one, it closes the connection
// instead), or refused the SSUBSCRIBE (MOVED when the slot moved before
// go-redis knew, CLUSTERDOWN when nobody serves it; only SSUBSCRIBE gets
// an error reply on this connection).
func (b *Broker) moved(pc *psConn, msg any, err error) bool {
	if !b.sharded {
		return false
	}
	var rerr redis.Error
	if errors.As(err, &rerr) {
		return true
	}
	s, ok := msg.(*redis.Subscription)
	return ok && s.Kind == "sunsubscribe"
}

// redial replaces pc's pub/sub connection with a new one subscribed to
// pc's channels, while the broker reports itself down; Redis's
// confirmation reports it up (receive). It serves a sharded channel that
// lost its shard (go-redis picks the slot's owner from its cluster state,
// reloaded first) and a connection that stopped answering (go-redis would
// redial it only when TCP gives up). The delay between attempts grows
// until a confirmation, since a refusal comes back through receive. It
// returns false once ctx is cancelled: pc is being closed.
func (b *Broker) redial(ctx context.Context, pc *psConn, why string) bool {
	b.mu.RLock()
	n, again := len(pc.channels), pc.failing
	b.mu.RUnlock()
	if b.sharded && n == 0 { // its channel was left: Unsubscribe is closing pc
		<-ctx.Done()
		return false
	}
	if !again {
		b.log.Warn("redis pub/sub connection lost; subscribing again on a new one", zap.String("reason", why))
	}
	b.setFailing(pc, true)
	const minWait, maxWait = 50 * time.Millisecond, time.Second
	for {
		if cc, ok := b.client.(*redis.ClusterClient); ok {
			cc.ReloadState(ctx)
		}
		pc.wait = min(max(2*pc.wait, minWait), maxWait)
		t := time.NewTimer(pc.wait/2 + rand.N(pc.wait/2)) // jittered: many topics may move at once
		select {
		case <-ctx.Done():
			t.Stop()
			return false
		case <-t.C:
		}
		// Dial and subscribe outside pc.cmd, which Subscribe and
		// Unsubscribe wait for; then, under it, catch up with the channels
		// joined or left meanwhile (a sharded connection's one channel
		// cannot change) and swap.
		b.mu.RLock()
		chs := slices.Collect(maps.Keys(pc.channels))
		b.mu.RUnlock()
		var ps *redis.PubSub
		var err error
		if b.sharded {
			ps = b.client.SSubscribe(context.Background())
			err = ps.SSubscribe(ctx, chs...)
		} else {
			ps = b.client.Subscribe(context.Background())
			if len(chs) > 0 {
				err = ps.Subscribe(ctx, chs...)
			}
		}
		pc.cmd.Lock()
		b.mu.RLock()
		now := slices.Collect(maps.Keys(pc.channels))
		b.mu.RUnlock()
		if !b.sharded {
			joined := slices.DeleteFunc(slices.Clone(now), func(c string) bool { return slices.Contains(chs, c) })
			left := slices.DeleteFunc(chs, func(c string) bool { return slices.Contains(now, c) })
			if err == nil && len(joined) > 0 {
				err = ps.Subscribe(ctx, joined...)
			}
			if err == nil && len(left) > 0 {
				err = ps.Unsubscribe(ctx, left...)
			}
		}
		if err != nil {
			pc.cmd.Unlock()
			b.log.Debug("redis subscribe on a new connection failed; retrying", zap.Error(err))
			_ = ps.Close()
			continue
		}
		b.mu.Lock()
		cancelled := ctx.Err() != nil
		old := pc.ps
		if !cancelled {
			pc.ps = ps
		}
		b.mu.Unlock()
		pc.cmd.Unlock()
		if cancelled {
			_ = ps.Close()
			return false
		}
		_ = old.Close()
		// Up again on Redis's confirmation of a channel, or on any answer
		// when there is none to confirm.
		pc.resubscribing = len(now) > 0
		return true
	}
}

// serverAnswers reports whether the server answers a PING on a connection
// from the client's pool within a HealthInterval.
func (b *Broker) serverAnswers(ctx context.Context) bool {
	ctx, cancel := context.WithTimeout(ctx, b.health)
	defer cancel()
	return b.client.Ping(ctx).Err() == nil
}

func (b *Broker) fail(pc *psConn, err error) {
	b.mu.RLock()
	first := !pc.failing
	b.mu.RUnlock()
	if first {
		b.log.Warn("redis pub/sub connection lost", zap.Error(err))
	}
	b.setFailing(pc, true)
}

// setFailing records pc's health; the broker is up when no connection
// fails. Edges are reported outside mu, in the order they happened
// (notifyMu, which a callback must not wait for: it must not call
// Unsubscribe or Close).
func (b *Broker) setFailing(pc *psConn, failing bool) {
	b.notifyMu.Lock()
	defer b.notifyMu.Unlock()
	b.mu.Lock()
	if pc.failing == failing {
		b.mu.Unlock()
		return
	}
	pc.failing = failing
	before := b.failing
	if failing {
		b.failing++
	} else {
		b.failing--
	}
	var fs []func(bool)
	if !b.closed && (before == 0) != (b.failing == 0) {
		for _, f := range b.notify {
			fs = append(fs, f)
		}
	}
	up := b.failing == 0
	b.mu.Unlock()
	if len(fs) > 0 && up {
		b.log.Info("redis pub/sub connection back")
	}
	for _, f := range fs {
		f(up)
	}
}

// NotifyState implements broadcast.StateNotifier. f runs synchronously on
// the goroutine that saw the edge (a receive goroutine, or one closing a
// sharded connection), must not block, and must not call Unsubscribe or
// Close.
func (b *Broker) NotifyState(f func(up bool)) (stop func()) {
	b.mu.Lock()
	id := b.nextID
	b.nextID++
	b.notify[id] = f
	b.mu.Unlock()
	return func() {
		b.mu.Lock()
		delete(b.notify, id)
		b.mu.Unlock()
	}
}

func (b *Broker) channel(topic string) (string, error) {
	if err := broadcast.ValidateTopic(topic); err != nil {
		return "", err
	}
	return b.prefix + topic, nil
}

// Publish sends payload to topic. While a pub/sub connection is down it
// fails at once with broadcast.ErrBrokerUnavailable; a failed PUBLISH
// wraps it too.
func (b *Broker) Publish(ctx context.Context, topic string, payload []byte) error {
	ch, err := b.channel(topic)
	if err != nil {
		return fmt.Errorf("redisbroker: publish: %w", err)
	}
	b.mu.RLock()
	closed, down := b.closed, b.failing > 0
	b.mu.RUnlock()
	switch {
	case closed:
		return fmt.Errorf("redisbroker: publish: %w", broadcast.ErrBrokerClosed)
	case down:
		return fmt.Errorf("redisbroker: publish: %w", broadcast.ErrBrokerUnavailable)
	}
	if b.sharded {
		err = b.client.SPublish(ctx, ch, payload).Err()
	} else {
		err = b.client.Publish(ctx, ch, payload).Err()
	}
	if err != nil {
		return fmt.Errorf("redisbroker: publish: %w", wrap(err))
	}
	return nil
}

// wrap marks errors other than Redis's own replies and the caller's
// context as the server being unavailable.
func wrap(err error) error {
	var rerr redis.Error
	if errors.As(err, &rerr) || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	return fmt.Errorf("%w: %w", broadcast.ErrBrokerUnavailable, err)
}

// Subscribe calls h with every message published to topic. It returns once
// Redis has confirmed the subscription.
func (b *Broker) Subscribe(ctx context.Context, topic string, h func([]byte)) (broadcast.Subscription, error) {
	ch, err := b.channel(topic)
	if err != nil {
		return nil, fmt.Errorf("redisbroker: subscribe: %w", err)
	}
	if h == nil {
		return nil, errors.New("redisbroker: subscribe: nil handler")
	}
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil, fmt.Errorf("redisbroker: subscribe: %w", broadcast.ErrBrokerClosed)
	}
	pc := b.shared
	if b.sharded {
		pc = b.conns[ch]
		if pc == nil {
			pc = newConn(b.client.SSubscribe(context.Background()))
			b.conns[ch] = pc
		}
	}
	c := pc.channels[ch]
	first := c == nil
	if first {
		c = &channel{subs: make(map[*subscription]func([]byte)), confirmed: make(chan struct{})}
		pc.channels[ch] = c
	}
	s := &subscription{b: b, pc: pc, ch: ch}
	c.subs[s] = h
	b.mu.Unlock()

	if first {
		pc.cmd.Lock()
		if b.sharded {
			err = pc.ps.SSubscribe(ctx, ch)
			if err == nil && !b.start(pc) { // one connection per sharded channel: this is its first
				err = broadcast.ErrBrokerClosed
			}
		} else {
			err = pc.ps.Subscribe(ctx, ch)
		}
		pc.cmd.Unlock()
		if err != nil {
			_ = s.Unsubscribe()
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
// a channel unsubscribes the connection (or, sharded, closes it); an error
// there is not returned, since go-redis has forgotten the channel and
// will not resubscribe it.
func (s *subscription) Unsubscribe() error {
	b := s.b
	b.mu.Lock()
	c := s.pc.channels[s.ch]
	if c == nil {
		b.mu.Unlock()
		return nil
	}
	if _, ok := c.subs[s]; !ok {
		b.mu.Unlock()
		return nil
	}
	delete(c.subs, s)
	last := len(c.subs) == 0
	if last {
		delete(s.pc.channels, s.ch)
	}
	closeConn := last && b.sharded && b.conns[s.ch] == s.pc && !b.closed
	if closeConn {
		delete(b.conns, s.ch)
	}
	b.mu.Unlock()
	switch {
	case closeConn:
		b.closeConn(s.pc)
	case last && !b.sharded:
		s.pc.cmd.Lock()
		defer s.pc.cmd.Unlock()
		b.mu.RLock()
		rejoined := s.pc.channels[s.ch] != nil // a Subscribe since: keep it
		b.mu.RUnlock()
		if rejoined {
			return nil
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := s.pc.ps.Unsubscribe(ctx, s.ch); err != nil {
			b.log.Debug("redis unsubscribe failed; the channel is forgotten anyway", zap.Error(err))
		}
	}
	return nil
}

// Close closes the broker's pub/sub connections and waits for their
// goroutines. It does not close the client.
func (b *Broker) Close() error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	b.closed = true
	var pcs []*psConn
	if b.shared != nil {
		pcs = append(pcs, b.shared)
	}
	for _, pc := range b.conns {
		pcs = append(pcs, pc)
	}
	clear(b.conns)
	b.mu.Unlock()
	for _, pc := range pcs {
		b.closeConn(pc)
	}
	return nil
}
