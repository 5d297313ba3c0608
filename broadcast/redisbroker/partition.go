package redisbroker

import (
	"context"
	"errors"
	"fmt"
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
