package broadcast

import (
	"fmt"
	"strings"
	"testing"

	"github.com/coder/websocket"
)

// TestAdmit is the backpressure specification: what each policy does with
// one more message, queue by queue. A queue is written as its messages'
// topics ("a1 b1": topic a's first message, then b's); direct sends are
// "!" before a "|".
func TestAdmit(t *testing.T) {
	tests := []struct {
		name   string
		policy Backpressure
		queue  string
		give   string // a message of topic a, or "" for a Member.Send
		max    int    // QueueMessages
		want   string // the queue after
		drop   int    // messages dropped, the new one included
		close  bool   // the member must be closed
	}{
		{"close: room", CloseSlow, "a1 b1", "a2", 3, "a1 b1 a2", 0, false},
		{"close: full", CloseSlow, "a1 b1 a2", "a3", 3, "a1 b1 a2", 0, true},
		{"drop oldest: room", DropOldest, "a1 b1", "a2", 3, "a1 b1 a2", 0, false},
		{"drop oldest: full", DropOldest, "a1 b1 a2", "a3", 3, "b1 a2 a3", 1, false},
		{"drop oldest: full of others", DropOldest, "b1 b2 b3", "a1", 3, "b1 b2 b3", 1, false},
		{"drop oldest: never a direct send", DropOldest, "!a0 | b1 b2", "a1", 3, "!a0 | b1 b2", 1, false},
		{"keep latest: replaces with room", KeepLatest, "a1 b1", "a2", 5, "b1 a2", 1, false},
		{"keep latest: first", KeepLatest, "b1", "a1", 5, "b1 a1", 0, false},
		{"keep latest: full", KeepLatest, "b1 a1 b2", "a2", 3, "b1 b2 a2", 1, false},
		{"keep latest: full of others", KeepLatest, "b1 b2 b3", "a1", 3, "b1 b2 b3", 1, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := &topic{name: "a", policy: tt.policy}
			b := &topic{name: "b"} // CloseSlow
			var q queue
			build := func(s string) *delivery {
				d := &delivery{typ: websocket.MessageText, data: []byte(s)}
				switch s[0] {
				case 'a':
					d.topic = a
				case 'b':
					d.topic = b
				}
				return d
			}
			for _, s := range strings.Fields(tt.queue) {
				switch {
				case s == "|":
				case s[0] == '!':
					q.pushDirect(build(s[1:]))
				default:
					q.push(build(s))
				}
			}
			got := q.admit(build(tt.give), tt.max, 1<<20)
			queued := strings.HasSuffix(tt.want, tt.give)
			if got.overflow != tt.close || got.dropped != tt.drop || got.queued != queued {
				t.Fatalf("admit = %+v, want close %v, dropped %d", got, tt.close, tt.drop)
			}
			if s := q.String(); s != tt.want {
				t.Fatalf("queue %q, want %q", s, tt.want)
			}
		})
	}
}

// TestAdmitBytes: the bytes bound makes room the same way, and a message
// that would not fit even then is dropped alone: the queue keeps what it
// had, KeepLatest's value included.
func TestAdmitBytes(t *testing.T) {
	tests := []struct {
		name    string
		policy  Backpressure
		queue   []int // payload sizes; negative: another topic's
		give    int
		max     int // QueueBytes
		want    []int
		dropped int
		queued  bool
	}{
		{"drop oldest makes room", DropOldest, []int{10, 10, 10}, 25, 35, []int{10, 25}, 2, true},
		{"drop oldest cannot make room", DropOldest, []int{-8, 1}, 5, 10, []int{-8, 1}, 1, false},
		{"keep latest replaces", KeepLatest, []int{-6, 2}, 4, 10, []int{-6, 4}, 1, true},
		{"keep latest cannot fit: the old value stays", KeepLatest, []int{-6, 2}, 7, 10, []int{-6, 2}, 1, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := &topic{name: "a", policy: tt.policy}
			b := &topic{name: "b"}
			var q queue
			for _, n := range tt.queue {
				if n < 0 {
					q.push(&delivery{topic: b, data: make([]byte, -n)})
				} else {
					q.push(&delivery{topic: a, data: make([]byte, n)})
				}
			}
			got := q.admit(&delivery{topic: a, data: make([]byte, tt.give)}, 100, tt.max)
			var sizes []int
			for _, d := range q.items[q.head:] {
				n := len(d.data)
				if d.topic == b {
					n = -n
				}
				sizes = append(sizes, n)
			}
			if got.queued != tt.queued || got.dropped != tt.dropped || fmt.Sprint(sizes) != fmt.Sprint(tt.want) {
				t.Fatalf("admit = %+v, queue %v; want queued %v, dropped %d, queue %v", got, sizes, tt.queued, tt.dropped, tt.want)
			}
		})
	}
}
