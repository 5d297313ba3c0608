package broadcast

import "fmt"

// Backpressure is what a topic's message does to a member whose queue is
// full (Options.QueueMessages or QueueBytes). The queue's bounds are the
// same under every policy; Options.Backpressure chooses one per topic.
type Backpressure uint8

const (
	// CloseSlow closes the member with 1008 Policy Violation "too slow"
	// (ErrTooSlow): a client that cannot keep up reconnects and
	// resynchronises. The default.
	CloseSlow Backpressure = iota

	// DropOldest drops the topic's oldest queued messages to make room,
	// or the new message when none of the topic's is queued. For feeds
	// where recent messages matter more than old ones.
	DropOldest

	// KeepLatest keeps at most one queued message of the topic per
	// member: a new one replaces it, full queue or not, and is dropped
	// when the queue is full of other topics' messages. For values where
	// only the latest counts: a price, a cursor, a gauge.
	KeepLatest
)

func (b Backpressure) String() string {
	switch b {
	case CloseSlow:
		return "CloseSlow"
	case DropOldest:
		return "DropOldest"
	case KeepLatest:
		return "KeepLatest"
	}
	return fmt.Sprintf("Backpressure(%d)", uint8(b))
}

// admitted is what admit did with a message.
type admitted struct {
	queued   bool // the message is in the queue
	dropped  int  // messages dropped: older ones of its topic, or itself
	overflow bool // CloseSlow: the member must be closed
}

// admit queues d under the queue's bounds and d's topic's policy. A
// delivery without a topic (Member.Send) is CloseSlow's. It decides before
// it changes anything: a message that would not fit even once the
// topic's messages it may drop are gone is dropped alone, and the queue
// keeps what it had.
func (q *queue) admit(d *delivery, maxMessages, maxBytes int) admitted {
	policy := CloseSlow
	if d.topic != nil {
		policy = d.topic.policy
	}
	fits := func(n, bytes int) bool { return n+1 <= maxMessages && bytes+len(d.data) <= maxBytes }
	n, bytes := q.len(), q.bytes
	if policy == CloseSlow {
		if !fits(n, bytes) {
			return admitted{overflow: true}
		}
		q.push(d)
		return admitted{queued: true}
	}
	// The topic's queued messages, oldest first: how many must go?
	drop := 0
	for _, it := range q.items[q.head+q.direct:] {
		if policy == KeepLatest && drop == 1 {
			break // KeepLatest holds at most one
		}
		if it.topic != d.topic {
			continue
		}
		if policy == DropOldest && fits(n, bytes) {
			break
		}
		drop++
		n, bytes = n-1, bytes-len(it.data)
	}
	if !fits(n, bytes) {
		return admitted{dropped: 1} // the new one: the queue is full of others
	}
	q.dropOldest(d.topic, drop)
	q.push(d)
	return admitted{queued: true, dropped: drop}
}
