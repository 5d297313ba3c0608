package broadcast

import (
	"sync"

	"go.uber.org/zap"
)

// topic is the hub's broker subscription to one topic and its members.
type topic struct {
	name   string
	policy Backpressure
	ready  chan struct{} // closed once the broker's Subscribe returned
	sub    Subscription  // set before ready is closed; nil on error
	err    error         // set before ready is closed

	// refs counts members subscribed or subscribing, under Hub.mu; the
	// subscription is released when it drops to zero.
	refs int

	// mu guards members and index: the members whose Subscribe returned,
	// to which deliveries go. A fan-out holds it for reading, so a Join
	// or Leave waits for this topic's fan-out only.
	mu      sync.RWMutex
	members []*Member
	index   map[*Member]int
}

func (h *Hub) newTopic(name string) *topic {
	t := &topic{name: name, ready: make(chan struct{}), index: make(map[*Member]int)}
	if h.opts.Backpressure != nil {
		t.policy = h.opts.Backpressure(name)
	}
	return t
}

func (t *topic) add(m *Member) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if _, ok := t.index[m]; !ok {
		t.index[m] = len(t.members)
		t.members = append(t.members, m)
	}
}

func (t *topic) remove(m *Member) {
	t.mu.Lock()
	defer t.mu.Unlock()
	i, ok := t.index[m]
	if !ok {
		return
	}
	last := len(t.members) - 1
	t.members[i] = t.members[last]
	t.index[t.members[i]] = i
	t.members[last] = nil
	t.members = t.members[:last]
	delete(t.index, m)
}

func (t *topic) len() int {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return len(t.members)
}

// deliver returns the broker handler of t. It decodes once and queues the
// message for each member without blocking.
func (h *Hub) deliver(t *topic) func([]byte) {
	return func(payload []byte) {
		e, err := ParseEnvelope(payload)
		if err != nil {
			h.malformed.Add(1)
			h.log.Warn("dropped a broker message", zap.String("topic", t.name), zap.Error(err))
			return
		}
		h.received.Add(1)
		if len(e.Payload) > h.opts.QueueBytes {
			// It fits no member's queue: no member is to blame.
			h.oversized.Add(1)
			h.log.Warn("dropped a broker message larger than QueueBytes", zap.String("topic", t.name),
				zap.Int("bytes", len(e.Payload)), zap.Int("queueBytes", h.opts.QueueBytes))
			return
		}
		d := &delivery{topic: t, typ: e.Type, data: e.Payload, sender: e.Sender}
		var queued, dropped uint64
		t.mu.RLock()
		for _, m := range t.members {
			a := m.enqueue(d)
			if a.queued {
				queued++
			}
			dropped += uint64(a.dropped)
		}
		t.mu.RUnlock()
		// Once per message, not per member: the counters are shared.
		h.delivered.Add(queued)
		if dropped > 0 {
			h.dropped.Add(dropped)
		}
	}
}
