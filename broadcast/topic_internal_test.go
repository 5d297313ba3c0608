package broadcast

import (
	"context"
	"strconv"
	"testing"

	"github.com/coder/websocket"
)

// TestFanOutAllocations: a broker message costs a few allocations (its
// envelope's fields and one delivery shared by every member), none per
// member: on a CloseSlow topic whose members keep up, and on a KeepLatest
// topic whose members each have a message queued, which it replaces.
func TestFanOutAllocations(t *testing.T) {
	tests := []struct {
		policy Backpressure
		drain  bool // the members' writers take every message
	}{
		{CloseSlow, true},
		{KeepLatest, false},
	}
	for _, tt := range tests {
		t.Run(tt.policy.String(), func(t *testing.T) {
			h := NewHub(NewMemory(), Options{})
			defer func() { _ = h.Shutdown(context.Background()) }()
			tp := h.newTopic("room")
			tp.policy = tt.policy
			const members = 1000
			ms := make([]*Member, members)
			for i := range ms {
				ms[i] = &Member{h: h, key: "k" + strconv.Itoa(i), wake: make(chan struct{}, 1)}
				tp.add(ms[i])
			}
			payload, err := AppendEnvelope(nil, Envelope{Type: websocket.MessageText, Payload: []byte("hello"), Sender: "elsewhere"})
			if err != nil {
				t.Fatal(err)
			}
			deliver := h.deliver(tp)
			round := func() {
				deliver(payload)
				for _, m := range ms {
					if !tt.drain {
						if m.q.len() != 1 {
							t.Fatalf("%d messages queued, want the latest only", m.q.len())
						}
						continue
					}
					if m.q.pop(false) == nil {
						t.Fatal("not delivered")
					}
				}
			}
			round() // queues start with an array of their own
			if got := testing.AllocsPerRun(50, round); got > 3 {
				t.Fatalf("%.1f allocations for a message to %d members, want at most 3", got, members)
			}
		})
	}
}
