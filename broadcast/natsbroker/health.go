package natsbroker

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/chiws/chiws/broadcast"
	"github.com/nats-io/nats.go"
	"go.uber.org/zap"
)

// Part names of Health besides the peers'.
const (
	PartConnection = "connection"
	PartProbe      = "probe"
	// PartSlowConsumer is down while nats.go drops messages for a
	// subscription whose handler fell behind by more than its pending
	// limits (a slow consumer), and until none was dropped for
	// HealthTimeout.
	PartSlowConsumer = "slow-consumer"
)

// MaxHeardPeers bounds the peers a heartbeat reports as heard (see
// Health): the first ones in the order of their IDs. A peer beyond them
// cannot tell whether this instance hears it, and does not report this
// instance down for that. It keeps a heartbeat within about 7 KB.
const MaxHeardPeers = 256

// Why a peer's part is down.
const (
	causeNone   = iota // it is up
	causeSilent        // its heartbeats stopped reaching us
	causeOneWay        // ours stopped reaching it, as its heartbeats say
)

// state is one part's state.
type state struct {
	up    bool
	since time.Time
	err   error
}

// retired is a peer ID dropped because an instance of the same Name
// appeared under a new ID (a restart in place).
type retired struct {
	name string
	at   time.Time
}

// peer is another broker instance this one has heard.
type peer struct {
	id, name  string
	part      string // "peer <name>/<id>" or "peer <id>"
	st        state
	cause     int       // why st is down, when it is
	lastHeard time.Time // its last heartbeat (or sync message) here
	back      time.Time // since when we hear it without a gap over HealthTimeout
	heardUs   time.Time // when it last heard us, by its heartbeats (zero: never said)
	oneWay    bool      // its latest heartbeat says ours do not reach it
}

// control is the payload of heartbeats, goodbyes, sync requests and sync
// answers. JSON, so that a later version may add fields that this one
// ignores during a rolling upgrade.
type control struct {
	ID   string `json:"id"`
	Name string `json:"name,omitempty"`
	Bye  bool   `json:"bye,omitempty"`
	// Heard is in heartbeats only (see beat); nil elsewhere, and in the
	// heartbeats of a version before it.
	Heard   map[string]int64 `json:"heard,omitempty"`
	Partial bool             `json:"partial,omitempty"`
}

// beat is a heartbeat as sent: control with Heard always present, so
// that an empty list ("I hear nobody") is told from none.
type beat struct {
	ID   string `json:"id"`
	Name string `json:"name,omitempty"`
	// Heard maps the ID of each peer this instance knows (at most
	// MaxHeardPeers) to the milliseconds since it last heard that peer.
	Heard map[string]int64 `json:"heard"`
	// Partial: some known peers were left out of Heard.
	Partial bool `json:"partial,omitempty"`
}

// change is a Health to deliver to the watchers registered before it.
type change struct {
	seq uint64
	h   broadcast.Health
}

type watcher struct {
	id   int
	from uint64 // changes already made when it was registered
	f    func(broadcast.Health)
}

// newBroker validates opts and returns a broker without a connection.
func newBroker(opts Options) (*Broker, error) {
	b := &Broker{
		prefix:    opts.SubjectPrefix,
		log:       opts.Logger,
		name:      opts.Name,
		interval:  opts.HealthInterval,
		timeout:   opts.HealthTimeout,
		forget:    opts.ForgetAfter,
		pendMsgs:  opts.pendingMsgs,
		pendBytes: opts.pendingBytes,
		peers:     make(map[string]*peer),
		slowSubs:  make(map[*nats.Subscription]int),
		retired:   make(map[string]retired),
		shared:    make(map[string]bool),
		waiters:   make(map[uint64]*syncWaiter),
		firstEcho: make(chan struct{}),
		wake:      make(chan struct{}, 1),
		beatNow:   make(chan struct{}, 1),
		stop:      make(chan struct{}),
	}
	if b.prefix == "" {
		b.prefix = DefaultSubjectPrefix
	}
	if err := validatePrefix(b.prefix); err != nil {
		return nil, err
	}
	if err := validateName(b.name); err != nil {
		return nil, err
	}
	switch {
	case b.interval < 0:
		return nil, fmt.Errorf("natsbroker: HealthInterval must not be negative, got %v", b.interval)
	case b.timeout < 0:
		return nil, fmt.Errorf("natsbroker: HealthTimeout must not be negative, got %v", b.timeout)
	case b.forget < 0:
		return nil, fmt.Errorf("natsbroker: ForgetAfter must not be negative, got %v", b.forget)
	}
	if b.interval == 0 {
		b.interval = DefaultHealthInterval
	}
	if b.timeout == 0 {
		b.timeout = DefaultHealthTimeouts * b.interval
	}
	if b.forget == 0 {
		b.forget = DefaultForgetAfter
	}
	if b.timeout < 2*b.interval {
		return nil, fmt.Errorf("natsbroker: HealthTimeout (%v) must be at least twice HealthInterval (%v), or one lost heartbeat reports a peer down", b.timeout, b.interval)
	}
	if b.forget <= b.timeout {
		return nil, fmt.Errorf("natsbroker: ForgetAfter (%v) must exceed HealthTimeout (%v)", b.forget, b.timeout)
	}
	if b.log == nil {
		b.log = zap.NewNop()
	}
	if b.pendMsgs == 0 {
		b.pendMsgs = pendingMsgs
	}
	if b.pendBytes == 0 {
		b.pendBytes = pendingBytes
	}
	var id [8]byte
	_, _ = rand.Read(id[:]) // never fails (crypto/rand)
	b.id = hex.EncodeToString(id[:])
	// The prefix is a valid subject ending with '.', so these are too.
	b.hbSubj = ControlPrefix + b.prefix + "hb"
	b.syncSubj = ControlPrefix + b.prefix + "sync"
	b.hello, _ = json.Marshal(control{ID: b.id, Name: b.name})
	b.goodbye, _ = json.Marshal(control{ID: b.id, Name: b.name, Bye: true})
	now := time.Now()
	b.conn = state{since: now, err: fmt.Errorf("%w: not connected yet", broadcast.ErrBrokerUnavailable)}
	b.probe = state{since: now, err: errors.New("no heartbeat received back yet")}
	b.slow = state{up: true, since: now}
	return b, nil
}

// start subscribes to the control subjects, makes the first probe and
// starts the broker's goroutines. b.nc is set.
func (b *Broker) start() error {
	b.inbox = b.nc.NewInbox()
	for _, s := range []struct {
		subj string
		h    nats.MsgHandler
	}{
		{b.hbSubj, b.onHeartbeat},
		{b.syncSubj, b.onSyncRequest},
		{b.inbox + ".*", b.onSyncAnswer},
	} {
		if _, err := b.nc.Subscribe(s.subj, s.h); err != nil {
			return fmt.Errorf("natsbroker: subscribe to %s: %w", s.subj, b.wrap(err))
		}
	}
	b.mu.Lock()
	connected := b.nc.IsConnected()
	if connected {
		b.conn = state{up: true, since: time.Now()}
	}
	b.mu.Unlock()
	if connected {
		// The first probe: the control subscriptions are sent before
		// this heartbeat, so the server echoes it unless it is stuck.
		if err := b.nc.Publish(b.hbSubj, b.hello); err == nil {
			t := time.NewTimer(b.timeout)
			select {
			case <-b.firstEcho:
			case <-t.C:
			}
			t.Stop()
		}
	}
	b.mu.Lock()
	b.started = true
	if !b.probe.up {
		b.probe.err = fmt.Errorf("own heartbeat not received back within %v", b.timeout)
	}
	b.mu.Unlock()
	b.wg.Add(2)
	go b.beatLoop() // owned by b: Close closes stop and waits (wg)
	go b.notifier() // likewise
	return nil
}

// PartOf implements broadcast.Monitor: no part of a NATS broker carries
// some topics only.
func (b *Broker) PartOf(string) string { return "" }

// Health implements broadcast.Monitor.
func (b *Broker) Health() broadcast.Health {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.healthLocked()
}

func (b *Broker) healthLocked() broadcast.Health {
	parts := []broadcast.PartHealth{
		{Name: PartConnection, Up: b.conn.up, Since: b.conn.since, Err: b.conn.err},
		{Name: PartProbe, Up: b.probe.up, Since: b.probe.since, Err: b.probe.err},
		{Name: PartSlowConsumer, Up: b.slow.up, Since: b.slow.since, Err: b.slow.err},
	}
	for _, p := range b.peers {
		parts = append(parts, broadcast.PartHealth{Name: p.part, Kind: broadcast.PartPeer, Up: p.st.up, Since: p.st.since, Err: p.st.err})
	}
	return broadcast.HealthOf(parts)
}

// NotifyHealth implements broadcast.Monitor. f runs on a goroutine of the
// broker, one call at a time, in the order of the changes; it receives
// only the changes made after NotifyHealth was called.
func (b *Broker) NotifyHealth(f func(broadcast.Health)) (stop func()) {
	b.mu.Lock()
	id := b.nextW
	b.nextW++
	b.watchers = append(b.watchers, watcher{id: id, from: b.changes, f: f})
	b.mu.Unlock()
	return func() {
		b.mu.Lock()
		b.watchers = slices.DeleteFunc(b.watchers, func(w watcher) bool { return w.id == id })
		b.mu.Unlock()
	}
}

// changedLocked queues the current Health for the watchers. b.mu is held,
// so the queue's order is the order of the changes.
func (b *Broker) changedLocked() {
	b.changes++
	if len(b.watchers) == 0 || b.closing {
		return
	}
	b.queue = append(b.queue, change{seq: b.changes, h: b.healthLocked()})
	select {
	case b.wake <- struct{}{}:
	default:
	}
}

// notifier calls the watchers with each queued change, outside b.mu: a
// watcher may take locks of its own that a caller of stop holds.
func (b *Broker) notifier() {
	defer b.wg.Done()
	for {
		select {
		case <-b.stop:
			return
		case <-b.wake:
		}
		for {
			b.mu.Lock()
			if len(b.queue) == 0 || b.closing {
				b.mu.Unlock()
				break
			}
			c := b.queue[0]
			b.queue[0] = change{}
			b.queue = b.queue[1:]
			var fs []func(broadcast.Health)
			for _, w := range b.watchers {
				if c.seq > w.from {
					fs = append(fs, w.f)
				}
			}
			b.mu.Unlock()
			for _, f := range fs {
				f(c.h)
			}
		}
	}
}

// setLocked changes st and logs the change once; it reports whether st
// changed. b.mu is held.
func (b *Broker) setLocked(st *state, part string, up bool, err error, now time.Time) bool {
	if st.up == up {
		return false
	}
	*st = state{up: up, since: now, err: err}
	if !up && st.err == nil {
		st.err = errors.New("down")
	}
	if b.started {
		if up {
			b.log.Info("nats broker: part up", zap.String("part", part))
		} else {
			b.log.Warn("nats broker: part down", zap.String("part", part), zap.Error(st.err))
		}
	}
	b.changedLocked()
	return true
}

// setConn is called by nats.go's connection handlers, one at a time.
func (b *Broker) setConn(up bool, err error) {
	if err != nil {
		err = fmt.Errorf("%w: %w", broadcast.ErrBrokerUnavailable, err)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closing {
		return
	}
	b.setLocked(&b.conn, PartConnection, up, err, time.Now())
	if up {
		// Back: let the probe and the peers see this instance at once.
		b.beatSoon()
	}
}

// beatSoon asks the beat loop for a heartbeat now; requests coalesce.
func (b *Broker) beatSoon() {
	select {
	case b.beatNow <- struct{}{}:
	default:
	}
}

// beatLoop publishes a heartbeat every interval (and on request), then
// checks the timeouts of the probe and of the peers.
func (b *Broker) beatLoop() {
	defer b.wg.Done()
	tick := time.NewTicker(b.interval)
	defer tick.Stop()
	for {
		select {
		case <-b.stop:
			return
		case <-tick.C:
		case <-b.beatNow:
		}
		// A failed publish (disconnected) is the connection part's to
		// report; the probe then goes down too, by its timeout.
		_ = b.nc.Publish(b.hbSubj, b.heartbeat(time.Now()))
		b.check(time.Now())
	}
}

// heartbeat returns this broker's heartbeat at now: its ID and Name, and
// how long ago it heard each peer it knows, so that each can tell whether
// its own heartbeats reach this instance.
func (b *Broker) heartbeat(now time.Time) []byte {
	b.mu.Lock()
	ids := make([]string, 0, len(b.peers))
	for id := range b.peers {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	hb := beat{ID: b.id, Name: b.name, Heard: make(map[string]int64, min(len(ids), MaxHeardPeers))}
	if len(ids) > MaxHeardPeers {
		ids, hb.Partial = ids[:MaxHeardPeers], true
	}
	for _, id := range ids {
		hb.Heard[id] = max(now.Sub(b.peers[id].lastHeard).Milliseconds(), 0)
	}
	b.mu.Unlock()
	data, _ := json.Marshal(hb) // never fails: strings, ints and a bool
	return data
}

// check applies the timeouts at now.
func (b *Broker) check(now time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closing {
		return
	}
	if silent := now.Sub(b.lastEchoLocked()); silent > b.timeout {
		b.setLocked(&b.probe, PartProbe, false,
			fmt.Errorf("own heartbeat not received back for %v (timeout %v)", silent.Round(time.Millisecond), b.timeout), now)
	}
	if !b.slow.up {
		// nats.go reports the first drop of a run only; the counts tell
		// whether the drops go on.
		for sub, seen := range b.slowSubs {
			switch n, err := sub.Dropped(); {
			case err != nil: // unsubscribed, or the connection closed
				delete(b.slowSubs, sub)
			case n != seen:
				b.slowSubs[sub], b.lastDrop = n, now
			}
		}
		if now.Sub(b.lastDrop) > b.timeout {
			clear(b.slowSubs)
			b.setLocked(&b.slow, PartSlowConsumer, true, nil, now)
		}
	}
	for id, p := range b.peers {
		silent := now.Sub(p.lastHeard)
		switch {
		case !p.st.up && silent > b.forget:
			delete(b.peers, id)
			b.log.Warn("nats broker: peer forgotten", zap.String("part", p.part),
				zap.Duration("silent", silent.Round(time.Millisecond)), zap.Duration("forget_after", b.forget))
			b.changedLocked()
		default:
			b.evalLocked(p, now)
		}
	}
	for id, r := range b.retired {
		if now.Sub(r.at) > b.forget {
			delete(b.retired, id)
		}
	}
	for name := range b.shared {
		if !b.hasNameLocked(name) {
			delete(b.shared, name)
		}
	}
}

// hasNameLocked reports whether a peer named name is known. b.mu is held.
func (b *Broker) hasNameLocked(name string) bool {
	for _, p := range b.peers {
		if p.name == name {
			return true
		}
	}
	return false
}

// onAsyncError is nats.go's error handler: it reports a slow consumer, and
// logs the other errors (a permissions violation).
func (b *Broker) onAsyncError(sub *nats.Subscription, err error) {
	if sub == nil || !errors.Is(err, nats.ErrSlowConsumer) {
		fields := []zap.Field{zap.Error(err)}
		if sub != nil {
			fields = append(fields, zap.String("subject", sub.Subject))
		}
		b.log.Warn("nats broker: asynchronous error", fields...)
		return
	}
	dropped, derr := sub.Dropped()
	msgs, bytes, _ := sub.PendingLimits()
	now := time.Now()
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closing {
		return
	}
	b.lastDrop = now
	if derr == nil {
		b.slowSubs[sub] = dropped
	}
	b.setLocked(&b.slow, PartSlowConsumer, false,
		fmt.Errorf("messages dropped on %s: its handler fell behind by more than its pending limits (%d messages or %d bytes), so nats.go drops what comes in (a slow consumer); the process is overloaded or stalled", sub.Subject, msgs, bytes), now)
}

// lastEchoLocked is when the probe last succeeded, or when the broker
// started checking.
func (b *Broker) lastEchoLocked() time.Time {
	if b.echoed {
		return b.lastEcho
	}
	return b.probe.since
}

// onHeartbeat handles heartbeats and goodbyes, this broker's own included.
func (b *Broker) onHeartbeat(m *nats.Msg) {
	c, ok := b.parse(m)
	if !ok {
		return
	}
	now := time.Now()
	if c.ID == b.id {
		if c.Bye {
			return
		}
		b.mu.Lock()
		defer b.mu.Unlock()
		if !b.echoed {
			close(b.firstEcho)
		}
		b.echoed, b.lastEcho = true, now
		if !b.closing {
			b.setLocked(&b.probe, PartProbe, true, nil, now)
		}
		return
	}
	if c.Bye {
		b.mu.Lock()
		defer b.mu.Unlock()
		if p := b.peers[c.ID]; p != nil && !b.closing {
			delete(b.peers, c.ID)
			b.log.Info("nats broker: peer left", zap.String("part", p.part))
			b.changedLocked()
			b.peerGoneLocked(c.ID)
		}
		return
	}
	b.heard(c, now)
}

// heard records a sign of life from a peer: a heartbeat, a sync request
// or a sync answer.
func (b *Broker) heard(c control, now time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closing {
		return
	}
	p := b.peers[c.ID]
	if p == nil {
		p = &peer{id: c.ID, name: c.Name, part: "peer " + c.ID}
		if c.Name != "" {
			p.part = "peer " + c.Name + "/" + c.ID
		}
		p.st.err = errors.New("not heard yet")
		if c.Name != "" {
			b.restartedLocked(p, now)
		}
		b.peers[c.ID] = p
	}
	if now.Sub(p.lastHeard) > b.timeout {
		// New, or heard again after a silence: what it said of us
		// before is stale, and it may not have heard us again yet.
		p.back, p.oneWay = now, false
	}
	p.lastHeard = now
	if c.Heard != nil {
		// A heartbeat of this version: does it hear us?
		if ms, ok := c.Heard[b.id]; ok && ms >= 0 {
			p.heardUs = now.Add(-time.Duration(min(ms, int64(b.forget/time.Millisecond))) * time.Millisecond)
		} else if !ok && c.Partial {
			p.heardUs = now // left out for want of room: no news is no blame
		}
		// Not in a complete list: it has not heard us since heardUs (or
		// ever). The grace after back lets our heartbeat reach a peer
		// that has just (re)appeared before we blame the path.
		p.oneWay = now.Sub(p.heardUs) > b.timeout && now.Sub(p.back) > b.timeout
	}
	b.evalLocked(p, now)
}

// evalLocked sets p's part from what is known at now: down while its
// heartbeats do not reach us (silent), or while its heartbeats say ours
// do not reach it (one way). b.mu is held.
func (b *Broker) evalLocked(p *peer, now time.Time) {
	if silent := now.Sub(p.lastHeard); silent > b.timeout {
		b.peerDownLocked(p, causeSilent,
			fmt.Errorf("no heartbeat from it for %v (timeout %v): the instance stopped without a goodbye, or the network between us is cut (in at least the direction from it to us)", silent.Round(time.Millisecond), b.timeout), now)
		return
	}
	if p.oneWay {
		b.peerDownLocked(p, causeOneWay,
			fmt.Errorf("its heartbeats reach us, but say that ours have not reached it for %v (timeout %v): the network from us to it is cut, one way", now.Sub(p.heardUs).Round(time.Millisecond), b.timeout), now)
		return
	}
	p.cause = causeNone
	if b.setLocked(&p.st, p.part, true, nil, now) {
		// New or back: it may not know this instance yet, or think it
		// down; answer now rather than within an interval.
		b.beatSoon()
	}
}

// peerDownLocked sets p's part down for cause, or changes the reason of a
// part already down for another cause (logged and notified too). b.mu is
// held.
func (b *Broker) peerDownLocked(p *peer, cause int, err error, now time.Time) {
	if p.st.up {
		p.cause = cause
		b.setLocked(&p.st, p.part, false, err, now)
		b.peerGoneLocked(p.id)
		return
	}
	if p.cause == cause {
		return
	}
	p.cause, p.st.err = cause, err
	if b.started {
		b.log.Warn("nats broker: part down", zap.String("part", p.part), zap.Error(err))
	}
	b.changedLocked()
}

// restartedLocked handles a new peer p with a Name: an instance restarted
// in place (killed, then started again by its orchestrator) comes back
// under a new ID and the same Name, and its old ID, which will never be
// heard again, is dropped at once rather than reported down for
// ForgetAfter. Two live instances that share a Name would drop each
// other at every heartbeat and hide a silent one: when a dropped ID is
// heard again, the Name is marked shared (logged once) and no longer
// taken as a sign of a restart while a peer bears it. b.mu is held; the
// caller notifies the change (p comes up in the same change).
func (b *Broker) restartedLocked(p *peer, now time.Time) {
	if r, ok := b.retired[p.id]; ok {
		delete(b.retired, p.id)
		if !b.shared[r.name] {
			b.shared[r.name] = true
			b.log.Warn("nats broker: instances share a Name; restarts under it are not detected",
				zap.String("name", r.name), zap.String("part", p.part))
		}
		return
	}
	if b.shared[p.name] {
		return
	}
	for id, old := range b.peers {
		if old.name != p.name {
			continue
		}
		delete(b.peers, id)
		b.retired[id] = retired{name: p.name, at: now}
		b.log.Info("nats broker: peer restarted", zap.String("part", old.part), zap.String("new_part", p.part))
		b.peerGoneLocked(id)
	}
}

// parse decodes a control message; it ignores what is not one (another
// application on the subject, a broken client).
func (b *Broker) parse(m *nats.Msg) (control, bool) {
	var c control
	if err := json.Unmarshal(m.Data, &c); err != nil || c.ID == "" || validateName(c.ID) != nil || validateName(c.Name) != nil {
		b.log.Debug("nats broker: ignored a control message", zap.String("subject", m.Subject), zap.Int("bytes", len(m.Data)))
		return control{}, false
	}
	return c, true
}
