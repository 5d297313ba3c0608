package broadcast

import (
	"fmt"
	"strings"
	"testing"

	"github.com/coder/websocket"
)

// TestQueueStaysBounded: a member that always stays a message behind
// never drains its queue to zero; the queue must not grow with every
// message ever delivered.
func TestQueueStaysBounded(t *testing.T) {
	var q queue
	d := &delivery{typ: websocket.MessageText, data: []byte("x")}
	q.push(d)
	for range 1_000_000 {
		q.push(d) // always one message behind
		if q.pop(false) == nil {
			t.Fatal("empty")
		}
	}
	if cap(q.items) > 8 {
		t.Fatalf("a queue one message behind holds a %d-entry array", cap(q.items))
	}
}

// TestQueueShrinksAfterABurst: a drained queue lets a grown array go.
func TestQueueShrinksAfterABurst(t *testing.T) {
	var q queue
	d := &delivery{typ: websocket.MessageBinary, data: make([]byte, 10)}
	for range 200 {
		q.push(d)
	}
	for q.pop(false) != nil {
	}
	if cap(q.items) > queueKeep || q.bytes != 0 {
		t.Fatalf("after a drained burst of 200: cap %d, bytes %d; want cap <= %d, 0 bytes", cap(q.items), q.bytes, queueKeep)
	}
}

// String renders the queue as TestAdmit writes it.
func (q *queue) String() string {
	var parts []string
	for i, d := range q.items[q.head:] {
		s := string(d.data)
		if i < q.direct {
			s = "!" + s
		}
		parts = append(parts, s)
		if i == q.direct-1 {
			parts = append(parts, "|")
		}
	}
	return fmt.Sprint(strings.Join(parts, " "))
}
