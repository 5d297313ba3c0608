package broadcast_test

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"

	"github.com/chiws/chiws/broadcast"
	"github.com/chiws/chiws/broadcast/internal/fleettest"
	"github.com/coder/websocket"
)

// TestBackpressureOverASocket: a client that stops reading while 32 MiB
// are published to its topic. CloseSlow closes it with 1008; DropOldest
// and KeepLatest keep it, and when it reads again it gets a rising
// sequence that ends with the latest message.
func TestBackpressureOverASocket(t *testing.T) {
	tests := []struct {
		policy    broadcast.Backpressure
		wantClose bool
	}{
		{broadcast.CloseSlow, true},
		{broadcast.DropOldest, false},
		{broadcast.KeepLatest, false},
	}
	for _, tt := range tests {
		t.Run(tt.policy.String(), func(t *testing.T) {
			opts := broadcast.Options{
				QueueMessages: 16,
				Backpressure:  func(string) broadcast.Backpressure { return tt.policy },
			}
			hub, dial, joined := room(t, opts, nil, joinRoom)
			c := dial("") // a small receive buffer set after the handshake can stall TCP
			<-joined
			const n = 4096
			pad := strings.Repeat("x", 8<<10)
			for i := range n {
				if err := hub.Publish(context.Background(), "room", websocket.MessageText, []byte(strconv.Itoa(i)+" "+pad)); err != nil {
					t.Fatal(err)
				}
			}
			ctx, cancel := context.WithTimeout(context.Background(), fleettest.Timeout)
			defer cancel()
			last := -1
			for last < n-1 {
				_, p, err := c.Read(ctx)
				if err != nil {
					if tt.wantClose && websocket.CloseStatus(err) == websocket.StatusPolicyViolation {
						break
					}
					t.Fatalf("after message %d: %v", last, err)
				}
				var i int
				if _, err := fmt.Sscanf(string(p), "%d ", &i); err != nil || i <= last {
					t.Fatalf("got message %d after %d", i, last)
				}
				last = i
			}
			st := hub.Stats()
			switch {
			case tt.wantClose && (st.Slow != 1 || last == n-1):
				t.Fatalf("CloseSlow: Slow = %d, last message %d; want closed before the end", st.Slow, last)
			case !tt.wantClose && (st.Slow != 0 || st.Dropped == 0):
				t.Fatalf("%v: Slow = %d, Dropped = %d; want 0 and some", tt.policy, st.Slow, st.Dropped)
			}
		})
	}
}

func TestBackpressureString(t *testing.T) {
	if s := broadcast.Backpressure(7).String(); s != "Backpressure(7)" {
		t.Fatal(s)
	}
}
