package broadcast

import "github.com/coder/websocket"

// delivery is one message for members: a broker message, shared by every
// member of its topic, or a Member.Send. Its fields are never modified.
type delivery struct {
	topic  *topic // nil for Member.Send
	typ    websocket.MessageType
	data   []byte
	sender string // Member.Key that must not receive it
}

// queueKeep is the largest backing array a drained queue keeps: a burst
// grows it, and the drain lets it go.
const queueKeep = 16

// queue is a member's pending messages in write order: what Member.Send
// queued while the member was paused (the direct part), then deliveries.
// Member.mu guards it.
type queue struct {
	items  []*delivery
	head   int // items[:head] are taken
	bytes  int // payload bytes of items[head:]
	direct int // items[head:head+direct] are the direct part
}

func (q *queue) len() int { return len(q.items) - q.head }

// push appends d, reusing the taken prefix rather than growing past it: a
// member that stays a message behind never drains to zero.
func (q *queue) push(d *delivery) {
	if q.head > 0 && len(q.items) == cap(q.items) {
		n := copy(q.items, q.items[q.head:])
		clear(q.items[n:])
		q.items, q.head = q.items[:n], 0
	}
	q.items = append(q.items, d)
	q.bytes += len(d.data)
}

// pushDirect inserts d after the direct part, before the deliveries.
func (q *queue) pushDirect(d *delivery) {
	q.push(d)
	at := q.head + q.direct
	copy(q.items[at+1:], q.items[at:len(q.items)-1])
	q.items[at] = d
	q.direct++
}

// pop takes the head; direct only takes from the direct part. It returns
// nil when there is nothing to take.
func (q *queue) pop(direct bool) *delivery {
	if q.len() == 0 || (direct && q.direct == 0) {
		return nil
	}
	d := q.items[q.head]
	q.items[q.head] = nil
	q.head++
	q.bytes -= len(d.data)
	if q.direct > 0 {
		q.direct--
	}
	if q.head == len(q.items) {
		if cap(q.items) > queueKeep {
			q.items = nil
		} else {
			q.items = q.items[:0]
		}
		q.head = 0
	}
	return d
}

// dropOldest deletes t's k oldest deliveries after the direct part, in
// one pass that keeps the others in order.
func (q *queue) dropOldest(t *topic, k int) {
	if k == 0 {
		return
	}
	w := q.head + q.direct
	for _, d := range q.items[w:] {
		if k > 0 && d.topic == t {
			q.bytes -= len(d.data)
			k--
			continue
		}
		q.items[w] = d
		w++
	}
	clear(q.items[w:])
	q.items = q.items[:w]
}

// reset drops everything and lets the backing array go.
func (q *queue) reset() { *q = queue{} }
