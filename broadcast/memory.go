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
	return &memory{topics: make(map[string]map[*memorySub]struct{})}
}

type memory struct {
	// mu is held for reading while handlers run, so that Unsubscribe,
	// which takes it for writing, returns only once no handler of the
	// subscription is running.
	mu     sync.RWMutex
	topics map[string]map[*memorySub]struct{}
	closed bool
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
	b.mu.RLock()
	defer b.mu.RUnlock()
	if b.closed {
		return fmt.Errorf("memory broker: publish: %w", ErrBrokerClosed)
	}
	// Subscribers may retain payload: give them a copy the caller cannot
	// change, shared among them.
	p := append([]byte(nil), payload...)
	for s := range b.topics[topic] {
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
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil, fmt.Errorf("memory broker: subscribe: %w", ErrBrokerClosed)
	}
	s := &memorySub{b: b, topic: topic, h: h}
	subs := b.topics[topic]
	if subs == nil {
		subs = make(map[*memorySub]struct{})
		b.topics[topic] = subs
	}
	subs[s] = struct{}{}
	return s, nil
}

func (s *memorySub) Unsubscribe() error {
	s.b.mu.Lock()
	defer s.b.mu.Unlock()
	if subs := s.b.topics[s.topic]; subs != nil {
		delete(subs, s)
		if len(subs) == 0 {
			delete(s.b.topics, s.topic)
		}
	}
	return nil
}

// Close drops every subscription; later calls fail with ErrBrokerClosed.
func (b *memory) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.closed = true
	clear(b.topics)
	return nil
}
