package broadcast

import (
	"context"
	"fmt"
	"sync"
)

// NewMemory returns the broker of a single process: Publish calls the
// handlers of the topic's subscriptions before it returns, in the
// publisher's goroutine, so one publisher's messages are delivered in
// order. It has no server, so it is never unavailable, and it starts no
// goroutine.
func NewMemory() Broker {
	return &memory{topics: make(map[string]*memoryTopic)}
}

type memory struct {
	mu     sync.Mutex // guards topics and closed; never held while handlers run
	topics map[string]*memoryTopic
	closed bool
}

// memoryTopic is one topic's subscriptions. mu is held for reading while
// its handlers run, so that Unsubscribe, which takes it for writing,
// returns only once no handler of the subscription is running, and a
// fan-out holds its own topic only.
type memoryTopic struct {
	mu   sync.RWMutex
	subs map[*memorySub]struct{}
	gone bool // removed from memory.topics: subscribe to a new one
}

type memorySub struct {
	b     *memory
	topic string
	h     func([]byte)
}

func (b *memory) Publish(ctx context.Context, topic string, payload []byte) error {
	if err := ValidateTopic(topic); err != nil {
		return fmt.Errorf("memory broker: publish: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("memory broker: publish: %w", err)
	}
	b.mu.Lock()
	t, closed := b.topics[topic], b.closed
	b.mu.Unlock()
	if closed {
		return fmt.Errorf("memory broker: publish: %w", ErrBrokerClosed)
	}
	if t == nil {
		return nil
	}
	// Subscribers may retain payload: give them a copy the caller cannot
	// change, shared among them.
	p := append([]byte(nil), payload...)
	t.mu.RLock()
	defer t.mu.RUnlock()
	for s := range t.subs {
		s.h(p)
	}
	return nil
}

func (b *memory) Subscribe(ctx context.Context, topic string, h func([]byte)) (Subscription, error) {
	if err := ValidateTopic(topic); err != nil {
		return nil, fmt.Errorf("memory broker: subscribe: %w", err)
	}
	if h == nil {
		return nil, fmt.Errorf("memory broker: subscribe: nil handler")
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("memory broker: subscribe: %w", err)
	}
	s := &memorySub{b: b, topic: topic, h: h}
	for {
		b.mu.Lock()
		if b.closed {
			b.mu.Unlock()
			return nil, fmt.Errorf("memory broker: subscribe: %w", ErrBrokerClosed)
		}
		t := b.topics[topic]
		if t == nil {
			t = &memoryTopic{subs: make(map[*memorySub]struct{})}
			b.topics[topic] = t
		}
		b.mu.Unlock()
		// Outside b.mu: this waits for t's fan-out, not other topics'.
		t.mu.Lock()
		if !t.gone {
			t.subs[s] = struct{}{}
			t.mu.Unlock()
			return s, nil
		}
		t.mu.Unlock() // its last subscription left meanwhile
		forget(b, topic, t)
	}
}

func (s *memorySub) Unsubscribe() error {
	b := s.b
	b.mu.Lock()
	t := b.topics[s.topic]
	b.mu.Unlock()
	if t == nil {
		return nil
	}
	// Outside b.mu: this waits for t's fan-out, not other topics'.
	t.mu.Lock()
	delete(t.subs, s)
	gone := len(t.subs) == 0
	t.gone = t.gone || gone
	t.mu.Unlock()
	if gone {
		forget(b, s.topic, t)
	}
	return nil
}

// forget removes t from b's topics, unless it was replaced meanwhile.
func forget(b *memory, name string, t *memoryTopic) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.topics[name] == t {
		delete(b.topics, name)
	}
}

// Close drops every subscription; later calls fail with ErrBrokerClosed.
func (b *memory) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.closed = true
	for name, t := range b.topics {
		t.mu.Lock()
		t.gone = true
		clear(t.subs)
		t.mu.Unlock()
		delete(b.topics, name)
	}
	return nil
}
