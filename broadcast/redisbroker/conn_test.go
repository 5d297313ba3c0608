package redisbroker_test

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/chiws/chiws/broadcast"
	"github.com/chiws/chiws/broadcast/internal/fleettest"
	"github.com/chiws/chiws/broadcast/redisbroker"
	"github.com/chiws/chiws/internal/wstest"
	"github.com/redis/go-redis/v9"
)

// throttledBroker returns a broker with one partition whose client reaches
// a new redis-server through a proxy that throttles Redis→client to
// 4 MiB/s, and a record of its health.
func throttledBroker(t *testing.T, opts redisbroker.Options) (*redisbroker.Broker, *healthRecord) {
	t.Helper()
	s := startRedis(t)
	proxy, err := wstest.NewProxy(s.addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = proxy.Close() })
	proxy.Throttle(wstest.Down, 4<<20) // before the client dials: every read is paced
	c := redis.NewClient(&redis.Options{Addr: proxy.Addr(), MaxRetries: -1})
	t.Cleanup(func() { _ = c.Close() })
	opts.Partitions = 1
	b, err := redisbroker.New(c, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	if h := b.Health(); !h.Up {
		t.Fatalf("broker down at start: %+v", h)
	}
	return b, recordHealth(t, b)
}

// TestThrottledLinkDeliversLargeMessages: over a slow link (4 MiB/s from
// Redis), 30 messages of 512 KiB each take many reads each to arrive.
// Every one arrives intact and in order, and the partition never goes
// down: no read of the pub/sub connection may stop in the middle of a
// reply (a deadline there loses the bytes read so far and the next read
// parses from the middle of a payload). The probe runs every 100 ms so
// that many probes fall while a message is arriving.
func TestThrottledLinkDeliversLargeMessages(t *testing.T) {
	b, rec := throttledBroker(t, redisbroker.Options{HealthInterval: 100 * time.Millisecond})
	ctx := timeoutCtx(t)
	got := make(chan []byte, 1)
	sub, err := b.Subscribe(ctx, "big", func(p []byte) {
		select {
		case got <- p:
		default: // one at a time: the test publishes after each arrival
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	const n, size = 30, 512 << 10
	for i := range n {
		want := bytes.Repeat([]byte{byte('a' + i%26)}, size)
		copy(want, fmt.Sprintf("message %d:", i))
		if err := b.Publish(ctx, "big", want); err != nil {
			t.Fatalf("publish %d: %v (health %+v)", i, err, b.Health())
		}
		select {
		case p := <-got:
			if !bytes.Equal(p, want) {
				t.Fatalf("message %d arrived altered: %d bytes starting %q", i, len(p), p[:min(len(p), 16)])
			}
		case <-ctx.Done():
			t.Fatalf("message %d of %d never arrived (health %+v)", i, n, b.Health())
		}
	}
	if down := rec.downSeen(); len(down) > 0 {
		t.Fatalf("partition reported down during the transfer: %v (%+v)", down, b.Health())
	}
}

// TestThrottledLinkNoInjection: a payload that a chat member controls,
// long enough to take many reads over a slow link, and ending in bytes
// that look like a pub/sub message on another topic's channel, is
// delivered intact to its own topic and never to the other one. Were a
// read cut in the middle of the payload, the parser would take its tail
// for a message of the other topic. A burst of 20, with the default
// health settings, as a room under attack would send.
func TestThrottledLinkNoInjection(t *testing.T) {
	b, _ := throttledBroker(t, redisbroker.Options{})
	ctx := timeoutCtx(t)
	otherCh, err := b.Channel("other")
	if err != nil {
		t.Fatal(err)
	}
	forged := "\x01\x01FORGED"
	payload := []byte(strings.Repeat("+", 500<<10) +
		fmt.Sprintf("\r\n*3\r\n$7\r\nmessage\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n", len(otherCh), otherCh, len(forged), forged))

	other, otherGot := receiver()
	osub, err := b.Subscribe(ctx, "other", other)
	if err != nil {
		t.Fatal(err)
	}
	defer osub.Unsubscribe()
	const n = 20
	got := make(chan []byte, n) // never full
	sub, err := b.Subscribe(ctx, "chat", func(p []byte) { got <- p })
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()

	for i := range n {
		if err := b.Publish(ctx, "chat", payload); err != nil {
			t.Fatalf("publish %d: %v (health %+v)", i, err, b.Health())
		}
	}
	// The same connection carries both topics, in order: once "end"
	// arrives on the other topic, every chat message has arrived, and
	// anything forged would have arrived before it.
	if err := b.Publish(ctx, "other", []byte("end")); err != nil {
		t.Fatal(err)
	}
	deadline := time.NewTimer(fleettest.Timeout)
	defer deadline.Stop()
	for done := false; !done; {
		select {
		case m := <-otherGot:
			if m != "end" {
				t.Fatalf("the other topic received %q, published to chat only", m)
			}
			done = true
		case <-deadline.C:
			t.Fatalf("the other topic never received its own message (health %+v)", b.Health())
		}
	}
	for i := range n {
		select {
		case p := <-got:
			if !bytes.Equal(p, payload) {
				t.Fatalf("chat message %d arrived altered (%d bytes, want %d)", i, len(p), len(payload))
			}
		default:
			t.Fatalf("chat received %d of %d messages before the other topic's later one", i, n)
		}
	}
}

// TestBacklogKeepsConnection: a burst larger than the slow link carries
// within HealthTimeout (40 messages of 500 KiB, 20 MiB at 4 MiB/s, with
// the default health settings) queues the probe behind it. The partition
// is reported down while the probe is late (messages are that late), but
// its connection, which keeps delivering, is not replaced: every message
// arrives, in order, and the partition comes back up when the probe does.
func TestBacklogKeepsConnection(t *testing.T) {
	b, rec := throttledBroker(t, redisbroker.Options{})
	ctx := timeoutCtx(t)
	got := make(chan []byte, 64)
	sub, err := b.Subscribe(ctx, "burst", func(p []byte) { got <- p }) // never full: 40 messages
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	const n, size = 40, 500 << 10
	msg := func(i int) []byte {
		m := bytes.Repeat([]byte{'x'}, size)
		copy(m, fmt.Sprintf("burst %d:", i))
		return m
	}
	for i := range n {
		if err := b.Publish(ctx, "burst", msg(i)); err != nil {
			t.Fatalf("publish %d: %v", i, err)
		}
	}
	for i := range n {
		select {
		case p := <-got:
			if !bytes.Equal(p, msg(i)) {
				t.Fatalf("message %d: got %d bytes starting %q", i, len(p), p[:min(len(p), 16)])
			}
		case <-ctx.Done():
			t.Fatalf("message %d of %d never arrived (health %+v)", i, n, b.Health())
		}
	}
	rec.wait(t, "down while the probe is late", func(h broadcast.Health) bool { return !h.Up })
	rec.wait(t, "up once the late probe arrived", isUp)
}
