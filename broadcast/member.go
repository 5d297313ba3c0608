package broadcast

import (
	"context"
	"fmt"
	"sync"

	"github.com/chiws/chiws"
	"github.com/coder/websocket"
	"go.uber.org/zap"
)

// Member is a socket in a Hub, returned by Join. Its methods are safe for
// concurrent use.
type Member struct {
	h *Hub
	c *chiws.Conn

	// topics and gone are guarded by h.mu.
	topics map[string]*topic
	gone   bool

	// mu guards the queue and the close decision. The queue holds what
	// the writer has not taken yet; bytes counts its payloads.
	mu      sync.Mutex
	queue   []message
	head    int
	bytes   int
	closing bool
	cause   error // recorded as the socket's end (chiws.Conn.CloseWith)
	code    websocket.StatusCode
	reason  string
	wake    chan struct{} // size one: work for the writer
}

type message struct {
	typ  websocket.MessageType
	data []byte // shared by every member: never modified
}

// Conn returns the member's socket.
func (m *Member) Conn() *chiws.Conn { return m.c }

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
	h.mu.Lock()
	switch {
	case h.closed:
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
		t = &topic{name: name, ready: make(chan struct{}), members: make(map[*Member]struct{})}
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
		orphan := err == nil && t.refs == 0 // every member left meanwhile
		h.mu.Unlock()
		if orphan {
			h.unsubscribe(t)
		}
	} else {
		<-t.ready // bounded by the owner's SubscribeTimeout
	}

	h.mu.Lock()
	defer h.mu.Unlock()
	if m.topics[name] != t {
		if m.gone {
			return fmt.Errorf("broadcast: subscribe: %w", ErrMemberLeft)
		}
		return nil // unsubscribed meanwhile
	}
	if t.err != nil {
		delete(m.topics, name)
		t.refs-- // nothing to release: the subscription failed
		return fmt.Errorf("broadcast: subscribe %q: %w", name, t.err)
	}
	t.members[m] = struct{}{}
	return nil
}

// Unsubscribe removes the member from topic; it is a no-op when the member
// is not there. The last member of a topic makes the hub unsubscribe on
// the broker.
func (m *Member) Unsubscribe(name string) error {
	h := m.h
	h.mu.Lock()
	t := m.topics[name]
	if t == nil {
		h.mu.Unlock()
		return nil
	}
	delete(m.topics, name)
	release := h.dropLocked(m, t)
	h.mu.Unlock()
	if release {
		if err := t.sub.Unsubscribe(); err != nil {
			return fmt.Errorf("broadcast: unsubscribe %q: %w", name, err)
		}
	}
	return nil
}

// enqueue queues msg without blocking and reports whether it did. A member
// over its bounds is closed with 1008 "too slow" instead.
func (m *Member) enqueue(msg message) bool {
	m.mu.Lock()
	if m.closing {
		m.mu.Unlock()
		return false
	}
	n := len(m.queue) - m.head
	if n+1 > m.h.opts.QueueMessages || m.bytes+len(msg.data) > m.h.opts.QueueBytes {
		m.mu.Unlock()
		if m.close(ErrTooSlow, websocket.StatusPolicyViolation, "too slow") {
			m.h.slow.Add(1)
			// Debug: a client that stops reading chooses this.
			m.h.log.Debug("closed a slow member",
				zap.Int("queuedMessages", n), zap.Int("queueMessages", m.h.opts.QueueMessages),
				zap.Int("queueBytes", m.h.opts.QueueBytes))
		}
		return false
	}
	if m.head > 0 && len(m.queue) == cap(m.queue) {
		// Reuse the taken prefix instead of growing past it: a member
		// that stays a message behind never drains to zero.
		m.queue = m.queue[:copy(m.queue, m.queue[m.head:])]
		m.head = 0
	}
	m.queue = append(m.queue, msg)
	m.bytes += len(msg.data)
	m.mu.Unlock()
	m.signal()
	return true
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
		clear(m.queue) // let the payloads go now
		m.queue, m.head, m.bytes = nil, 0, 0
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
	for {
		msg, ok, closing := m.next()
		switch {
		case closing:
			// Bounded by the middleware's Options.CloseTimeout, which
			// aborts the connection.
			_ = m.c.CloseWith(m.cause, m.code, m.reason)
			return
		case ok:
			ctx, cancel := context.WithTimeout(m.h.ctx, m.h.opts.WriteTimeout)
			err := m.c.Write(ctx, msg.typ, msg.data)
			cancel()
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

// next takes the head of the queue, or reports that the socket must be
// closed, or neither (nothing to do).
func (m *Member) next() (msg message, ok, closing bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closing {
		return message{}, false, true
	}
	if m.head == len(m.queue) {
		return message{}, false, false
	}
	msg = m.queue[m.head]
	m.queue[m.head] = message{}
	m.head++
	if m.head == len(m.queue) {
		m.queue, m.head = m.queue[:0], 0
	}
	m.bytes -= len(msg.data)
	return msg, true, false
}
