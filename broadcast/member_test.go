package broadcast

import (
	"testing"

	"github.com/coder/websocket"
	"go.uber.org/zap"
)

// TestQueueStaysBounded: a member that always stays a message behind
// never drains its queue to zero; the queue must not grow with every
// message ever delivered.
func TestQueueStaysBounded(t *testing.T) {
	h := &Hub{opts: Options{QueueMessages: 4, QueueBytes: 1 << 20}, log: zap.NewNop()}
	m := &Member{h: h, wake: make(chan struct{}, 1)}
	msg := message{typ: websocket.MessageText, data: []byte("x")}
	m.enqueue(msg)
	for i := 0; i < 1_000_000; i++ {
		m.enqueue(msg) // always one message behind
		if _, ok, _ := m.next(); !ok {
			t.Fatal("empty")
		}
	}
	if cap(m.queue) > 2*h.opts.QueueMessages {
		t.Fatalf("a 4-message queue that never drains holds a %d-entry array", cap(m.queue))
	}
}
