package redisbroker_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/chiws/chiws/broadcast/redisbroker"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
)

// TestRefusedChannel: a user whose ACL allows some channels only. Redis
// refusing a channel (NOPERM) concerns that channel, not the partition:
// its Subscribe fails at once with Redis's error, the partition stays up
// and keeps delivering its other topics. When a permission is revoked
// later, Redis disconnects the user's pub/sub connection; the new one
// subscribes every channel in one command, which Redis refuses as a
// whole; the broker sends them again one by one, keeps the permitted ones
// and forgets (and logs) the revoked one, and the partition comes back.
// Plain and sharded pub/sub.
func TestRefusedChannel(t *testing.T) {
	s := startRedis(t)
	admin := redis.NewClient(&redis.Options{Addr: s.addr()})
	t.Cleanup(func() { _ = admin.Close() })
	for _, sharded := range []bool{false, true} {
		t.Run(fmt.Sprintf("sharded=%v", sharded), func(t *testing.T) {
			ctx := timeoutCtx(t)
			user := fmt.Sprintf("limited-%v", sharded)
			// Topics "ok.*" and the probes (whose channels contain
			// "*probe.") are allowed, with any prefix or hash tag.
			if err := admin.Do(ctx, "ACL", "SETUSER", user, "on", ">pw", "~*", "+@all",
				"resetchannels", `&*ok.*`, `&*\*probe.*`).Err(); err != nil {
				t.Fatal(err)
			}
			c := redis.NewClient(&redis.Options{Addr: s.addr(), Username: user, Password: "pw", MaxRetries: -1})
			t.Cleanup(func() { _ = c.Close() })
			log, logs := observedLogger()
			b, err := redisbroker.New(c, redisbroker.Options{Partitions: 1, Sharded: sharded,
				HealthInterval: 100 * time.Millisecond, Logger: log})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = b.Close() })
			if !b.Health().Up {
				t.Fatalf("down at start: %+v", b.Health())
			}
			rec := recordHealth(t, b)
			ha, gotA := receiver()
			if _, err := b.Subscribe(ctx, "ok.a", ha); err != nil {
				t.Fatal(err)
			}
			hb, _ := receiver()
			if _, err := b.Subscribe(ctx, "ok.b", hb); err != nil {
				t.Fatal(err)
			}

			sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			start := time.Now()
			_, err = b.Subscribe(sctx, "secret", func([]byte) {})
			if err == nil || !strings.Contains(err.Error(), "NOPERM") || errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("Subscribe(secret) = %v, want Redis's NOPERM", err)
			}
			var rerr redis.Error
			if !errors.As(err, &rerr) {
				t.Errorf("Subscribe(secret) = %v (%T), want it to wrap a redis.Error", err, err)
			}
			if d := time.Since(start); d > time.Second {
				t.Errorf("Subscribe(secret) took %v, want at once", d)
			}
			if err := b.Publish(ctx, "ok.a", []byte("after the refusal")); err != nil {
				t.Fatal(err)
			}
			await(t, gotA, "after the refusal")
			if down := rec.downSeen(); len(down) > 0 {
				t.Fatalf("a refused channel brought the partition down: %v", down)
			}

			// Revoke ok.b: Redis disconnects the connection subscribed to it.
			if err := admin.Do(ctx, "ACL", "SETUSER", user, "resetchannels", `&*ok.a`, `&*\*probe.*`).Err(); err != nil {
				t.Fatal(err)
			}
			rec.wait(t, "down after Redis disconnected the pub/sub connection", allDown)
			rec.wait(t, "up again without the revoked channel", isUp)
			// Up means a probe went through the new connection, after
			// ok.a's confirmation on it.
			if err := b.Publish(ctx, "ok.a", []byte("back")); err != nil {
				t.Fatal(err)
			}
			await(t, gotA, "back")
			chB, _ := b.Channel("ok.b")
			if n := logs.FilterMessageSnippet("refused a channel").FilterField(zap.String("channel", chB)).Len(); n != 1 {
				t.Errorf("%d warnings about the revoked channel %s, want 1: %v", n, chB, logs.All())
			}
		})
	}
}
