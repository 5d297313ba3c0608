package broadcast

import (
	"bytes"
	"context"
	"fmt"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/chiws/chiws"
	"github.com/coder/websocket"
	"go.uber.org/zap"
)

// Limits of a member's identity (JoinOptions).
const (
	MaxIDLen   = 128
	MaxMetaLen = 1024
)

// JoinOptions configures Hub.JoinWith.
type JoinOptions struct {
	// ID is the application's name for the member, typically its user:
	// at most MaxIDLen bytes of UTF-8, not necessarily unique (one user,
	// two tabs). It names the member in the hub's logs and in the
	// socket's close log ("member").
	ID string

	// Meta is small application data about the member (a display name,
	// a role): at most MaxMetaLen bytes. The hub does not read it.
	Meta []byte

	// Paused starts the member paused: messages of its topics are queued
	// but not written until Resume, while Member.Send writes at once. The
	// application sends a snapshot and then calls Resume, so the client
	// gets the snapshot first and misses nothing published after the
	// join. The queue's bounds apply meanwhile.
	Paused bool
}

func (o *JoinOptions) validate() error {
	switch {
	case len(o.ID) > MaxIDLen:
		return fmt.Errorf("member ID of %d bytes, limit %d", len(o.ID), MaxIDLen)
	case !utf8.ValidString(o.ID):
		return fmt.Errorf("member ID is not UTF-8")
	case len(o.Meta) > MaxMetaLen:
		return fmt.Errorf("member Meta of %d bytes, limit %d", len(o.Meta), MaxMetaLen)
	}
	return nil
}

// Member is a socket in a Hub, returned by Join. Its methods are safe for
// concurrent use.
type Member struct {
	h    *Hub
	c    *chiws.Conn
	key  string
	id   string
	meta atomic.Pointer[[]byte] // replaced by Reauthorize

	// subMu serialises the member's Subscribe, Unsubscribe and leave, so
	// that its adds to and removals from a topic's list, made outside
	// h.mu, happen in the order of those calls.
	subMu sync.Mutex
	// topics and gone are guarded by h.mu.
	topics map[string]*topic
	gone   bool

	// timer aborts the socket when a write takes longer than
	// Options.WriteTimeout, and then signals timedOut, which the writer
	// waits for. One per member, and writes get context.Background: they
	// share no mutex, and coder/websocket registers nothing per write.
	timer    *time.Timer
	timedOut chan struct{} // size one

	// mu guards the queue, paused and the close decision.
	mu      sync.Mutex
	q       queue
	paused  bool
	closing bool
	cause   error // recorded as the socket's end (chiws.Conn.CloseWith)
	code    websocket.StatusCode
	reason  string
	wake    chan struct{} // size one: work for the writer
}

// Conn returns the member's socket.
func (m *Member) Conn() *chiws.Conn { return m.c }

// Key returns the member's name in the fleet, unique across every hub and
// instance: what Hub.PublishExcept leaves out, on every instance.
func (m *Member) Key() string { return m.key }

// ID returns JoinOptions.ID.
func (m *Member) ID() string { return m.id }

// Meta returns JoinOptions.Meta, or the Meta of the last Reauthorize; do
// not modify it.
func (m *Member) Meta() []byte {
	if p := m.meta.Load(); p != nil {
		return *p
	}
	return nil
}

// Reauthorize replaces the member's Meta (the identity of credentials the
// application refreshed; at most MaxMetaLen bytes) and runs
// Options.Authorize again for every topic of the member. It leaves, at
// once, the topics Authorize now refuses, calls Options.OnRevoked for each,
// and returns them.
func (m *Member) Reauthorize(meta []byte) ([]string, error) {
	if len(meta) > MaxMetaLen {
		return nil, fmt.Errorf("broadcast: reauthorize: member Meta of %d bytes, limit %d", len(meta), MaxMetaLen)
	}
	meta = bytes.Clone(meta)
	m.meta.Store(&meta)
	h := m.h
	if h.opts.Authorize == nil {
		return nil, nil
	}
	h.mu.RLock()
	names := slices.Sorted(maps.Keys(m.topics))
	h.mu.RUnlock()
	var left []string
	for _, name := range names {
		err := h.opts.Authorize(m, name)
		if err == nil {
			continue
		}
		if uerr := m.Unsubscribe(name); uerr != nil {
			h.log.Warn("leaving a revoked topic", zap.String("topic", name), zap.Error(uerr))
		}
		h.revoked.Add(1)
		h.log.Debug("topic revoked", zap.String("member", m.id), zap.String("topic", name), zap.Error(err))
		if h.opts.OnRevoked != nil {
			h.opts.OnRevoked(m, name, err)
		}
		left = append(left, name)
	}
	return left, nil
}

// Subscribe adds the member to topic; it is a no-op when the member is
// already there. The first member of a topic in this hub makes the hub
// subscribe on the broker, and Subscribe returns once the broker confirmed
// it (within Options.SubscribeTimeout). Messages published before that are
// not delivered.
func (m *Member) Subscribe(name string) error {
	if err := ValidateTopic(name); err != nil {
		return fmt.Errorf("broadcast: subscribe: %w", err)
	}
	h := m.h
	if err := h.authorize(m, name); err != nil {
		return fmt.Errorf("broadcast: subscribe: %w", err)
	}
	m.subMu.Lock()
	defer m.subMu.Unlock()
	h.mu.Lock()
	switch {
	case h.closed.Load():
		h.mu.Unlock()
		return fmt.Errorf("broadcast: subscribe: %w", ErrHubClosed)
	case m.gone:
		h.mu.Unlock()
		return fmt.Errorf("broadcast: subscribe: %w", ErrMemberLeft)
	}
	if _, ok := m.topics[name]; ok {
		h.mu.Unlock()
		return nil
	}
	t := h.topics[name]
	owner := t == nil
	if owner {
		t = h.newTopic(name)
		h.topics[name] = t
	}
	t.refs++
	m.topics[name] = t
	h.mu.Unlock()

	if owner {
		ctx, cancel := context.WithTimeout(h.ctx, h.opts.SubscribeTimeout)
		sub, err := h.b.Subscribe(ctx, name, h.deliver(t))
		cancel()
		h.mu.Lock()
		t.sub, t.err = sub, err
		if err != nil && h.topics[name] == t {
			delete(h.topics, name)
		}
		close(t.ready)
		h.mu.Unlock()
	} else {
		<-t.ready // bounded by the owner's SubscribeTimeout
	}

	// m.topics[name] is still t, and t.refs counts m: only this member's
	// calls, which subMu serialises, change them.
	h.mu.Lock()
	if t.err != nil {
		delete(m.topics, name)
		t.refs-- // nothing to release: the subscription failed
		h.mu.Unlock()
		return fmt.Errorf("broadcast: subscribe %q: %w", name, t.err)
	}
	h.mu.Unlock()
	t.add(m) // outside h.mu: it waits for t's fan-out
	return nil
}

// Unsubscribe removes the member from topic; it is a no-op when the member
// is not there. The last member of a topic makes the hub unsubscribe on
// the broker.
func (m *Member) Unsubscribe(name string) error {
	h := m.h
	m.subMu.Lock()
	defer m.subMu.Unlock()
	h.mu.Lock()
	t := m.topics[name]
	if t == nil {
		h.mu.Unlock()
		return nil
	}
	delete(m.topics, name)
	release := h.dropLocked(t)
	h.mu.Unlock()
	t.remove(m) // outside h.mu: it waits for t's fan-out
	if release {
		if err := t.sub.Unsubscribe(); err != nil {
			return fmt.Errorf("broadcast: unsubscribe %q: %w", name, err)
		}
	}
	return nil
}

// Send queues a message for this member alone, in order with the
// messages of its topics and under the same bounds: a member over them is
// closed with 1008 "too slow", and Send returns an error wrapping
// ErrTooSlow. While the member is paused, Send is written before
// everything its topics queued meanwhile. Send copies p. It fails with
// ErrMemberLeft once the member has left (whoever closed its socket),
// with ErrMessageTooBig over Options.MaxMessageBytes, and with
// ErrInvalidMessage for a type other than text or binary, or text that is
// not UTF-8; these leave the member as it was.
func (m *Member) Send(typ websocket.MessageType, p []byte) error {
	e := Envelope{Type: typ, Payload: p}
	if err := e.check(); err != nil {
		return fmt.Errorf("broadcast: send: %w", err)
	}
	if len(p) > m.h.opts.MaxMessageBytes {
		return fmt.Errorf("broadcast: send: %w: %d bytes, limit %d", ErrMessageTooBig, len(p), m.h.opts.MaxMessageBytes)
	}
	d := &delivery{typ: typ, data: append([]byte(nil), p...)}
	m.mu.Lock()
	if m.closing {
		m.mu.Unlock()
		return fmt.Errorf("broadcast: send: %w", ErrMemberLeft)
	}
	if m.q.len()+1 > m.h.opts.QueueMessages || m.q.bytes+len(d.data) > m.h.opts.QueueBytes {
		n := m.q.len()
		m.mu.Unlock()
		m.tooSlow(n)
		return fmt.Errorf("broadcast: send: %w", ErrTooSlow)
	}
	if m.paused {
		m.q.pushDirect(d)
	} else {
		m.q.push(d)
	}
	m.mu.Unlock()
	m.signal()
	return nil
}

// Resume writes what the member's topics queued while it was paused
// (JoinOptions.Paused), then their messages as they come. It is a no-op
// for a member that is not paused.
func (m *Member) Resume() {
	m.mu.Lock()
	m.paused = false
	m.q.direct = 0
	m.mu.Unlock()
	m.signal()
}

// enqueue queues d without blocking, under d's topic's Backpressure.
func (m *Member) enqueue(d *delivery) admitted {
	if d.sender == m.key {
		return admitted{}
	}
	m.mu.Lock()
	if m.closing {
		m.mu.Unlock()
		return admitted{}
	}
	a := m.q.admit(d, m.h.opts.QueueMessages, m.h.opts.QueueBytes)
	n := m.q.len()
	m.mu.Unlock()
	switch {
	case a.overflow:
		m.tooSlow(n)
	case a.queued:
		m.signal()
	}
	return a
}

// tooSlow closes the member with 1008 "too slow", once.
func (m *Member) tooSlow(queued int) {
	if !m.close(ErrTooSlow, websocket.StatusPolicyViolation, "too slow") {
		return
	}
	m.h.slow.Add(1)
	// Debug: a client that stops reading chooses this.
	m.h.log.Debug("closed a slow member", zap.String("member", m.id),
		zap.Int("queuedMessages", queued), zap.Int("queueMessages", m.h.opts.QueueMessages),
		zap.Int("queueBytes", m.h.opts.QueueBytes))
}

// close makes the writer close the socket with code and reason after the
// write in progress, dropping what is queued, and record cause as why the
// socket ended. It does not block and reports whether this call decided
// the close.
func (m *Member) close(cause error, code websocket.StatusCode, reason string) bool {
	m.mu.Lock()
	first := !m.closing
	if first {
		m.closing, m.cause, m.code, m.reason = true, cause, code, reason
		m.q.reset() // let the payloads go now
	}
	m.mu.Unlock()
	m.signal()
	return first
}

func (m *Member) signal() {
	select {
	case m.wake <- struct{}{}:
	default:
	}
}

// run is the member's writer: the only goroutine that writes to its
// socket. It ends when the socket closes, then the member leaves.
func (m *Member) run() {
	defer m.h.writers.Done()
	defer m.h.forget(m)
	defer m.left()
	for {
		d, closing := m.next()
		switch {
		case closing:
			// Bounded by the middleware's Options.CloseTimeout, which
			// aborts the connection.
			_ = m.c.CloseWith(m.cause, m.code, m.reason)
			return
		case d != nil:
			m.timer.Reset(m.h.opts.WriteTimeout)
			err := m.c.Write(context.Background(), d.typ, d.data)
			if !m.timer.Stop() {
				<-m.timedOut // it fired: the socket is aborted, even if the write got through
				err = context.DeadlineExceeded
			}
			if err != nil {
				_ = m.c.CloseNow()
				return
			}
			continue
		}
		select {
		case <-m.wake:
		case <-m.c.Done():
			return
		}
	}
}

// writeTimedOut is the write timer's: it aborts the socket, which ends
// the write, and tells the writer.
func (m *Member) writeTimedOut() {
	if m.c.CloseNowWith(ErrWriteTimeout) == nil {
		m.h.writeTimeouts.Add(1)
		// Debug: a client that stops reading chooses this.
		m.h.log.Debug("aborted a member whose write timed out", zap.String("member", m.id),
			zap.Duration("writeTimeout", m.h.opts.WriteTimeout))
	}
	m.timedOut <- struct{}{}
}

// left marks the member as gone for Send and deliveries, whoever ended
// its socket, and lets its queue go.
func (m *Member) left() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.closing = true
	m.q.reset()
}

// next takes the message to write, or reports that the socket must be
// closed, or neither (nothing to do).
func (m *Member) next() (d *delivery, closing bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closing {
		return nil, true
	}
	return m.q.pop(m.paused), false
}
