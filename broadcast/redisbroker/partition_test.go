package redisbroker_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/chiws/chiws/broadcast"
	"github.com/chiws/chiws/broadcast/internal/fleettest"
	"github.com/chiws/chiws/broadcast/redisbroker"
	"github.com/chiws/chiws/internal/wstest"
	"github.com/coder/websocket"
	"github.com/redis/go-redis/v9"
)

// TestStartWhileRedisDown: a broker created while nothing listens on
// Redis's port reports every partition down from the start (a hub made
// then knows it), fails Publish at once, reports up once redis-server
// starts there, and then carries a message from a hub to a member over a
// real WebSocket.
func TestStartWhileRedisDown(t *testing.T) {
	s := reserveRedis(t)
	c := redis.NewClient(&redis.Options{Addr: s.addr(), MaxRetries: -1})
	t.Cleanup(func() { _ = c.Close() })
	b, err := redisbroker.New(c, redisbroker.Options{Partitions: 4, HealthInterval: 200 * time.Millisecond, HealthTimeout: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	h := b.Health()
	if h.Up || len(h.Parts) != 4 {
		t.Fatalf("Health at start = %+v, want 4 parts, down", h)
	}
	for i, p := range h.Parts {
		if want := fmt.Sprintf("partition %d", i); p.Name != want || p.Up || p.Err == nil {
			t.Errorf("part %d = %+v, want %q down with a reason", i, p, want)
		}
	}
	start := time.Now()
	if err := b.Publish(context.Background(), "room", []byte("x")); !errors.Is(err, broadcast.ErrBrokerUnavailable) {
		t.Fatalf("Publish while down = %v, want ErrBrokerUnavailable", err)
	}
	if d := time.Since(start); d > 100*time.Millisecond {
		t.Errorf("Publish while down took %v, want at once", d)
	}
	rec := recordHealth(t, b)
	f := fleettest.Start(t, []fleettest.Node{{Broker: b}}, broadcast.Options{}) // its hub is made while Redis is down

	s.start(t)
	rec.wait(t, "up", isUp)
	node := f.Nodes[0]
	node.WaitState(t, true) // the hub learned it through OnBrokerState
	cl := node.Dial(t, 0, "room")
	node.WaitMembers(t, "room", 1)
	if err := node.Hub.Publish(context.Background(), "room", websocket.MessageText, []byte("hello")); err != nil {
		t.Fatal(err)
	}
	if m := cl.Next(t); m.Data != "hello" || m.Typ != websocket.MessageText {
		t.Fatalf("member got %v %q, want text hello", m.Typ, m.Data)
	}
}

// TestFrozenRedisReportedDown: a redis-server frozen with SIGSTOP keeps
// its connections open and silent, which no socket error reveals; each
// partition's probe goes unanswered and the broker reports every
// partition down within HealthInterval + HealthTimeout, then fails Publish
// at once. After SIGCONT it reports up with its subscriptions intact.
// The client's ReadTimeout (3 s by default) is longer than the bound: the
// bound must not depend on it.
func TestFrozenRedisReportedDown(t *testing.T) {
	s := startRedis(t)
	c := redis.NewClient(&redis.Options{Addr: s.addr(), MaxRetries: -1})
	t.Cleanup(func() { _ = c.Close() })
	const interval, timeout = 300 * time.Millisecond, 300 * time.Millisecond
	b, err := redisbroker.New(c, redisbroker.Options{Partitions: 4, HealthInterval: interval, HealthTimeout: timeout})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	if !b.Health().Up {
		t.Fatalf("Health at start = %+v, want up", b.Health())
	}
	rec := recordHealth(t, b)
	ctx := timeoutCtx(t)
	h, got := receiver()
	sub, err := b.Subscribe(ctx, "room", h)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	if err := b.Publish(ctx, "room", []byte("before")); err != nil {
		t.Fatal(err)
	}
	await(t, got, "before")

	frozen := time.Now()
	s.signal(t, syscall.SIGSTOP)
	t.Cleanup(func() { s.signal(t, syscall.SIGCONT) }) // before stop kills it (cleanups run last first)
	_, at := rec.wait(t, "every partition down", allDown)
	took := at.Sub(frozen)
	t.Logf("every partition reported down %v after SIGSTOP (bound %v)", took, interval+timeout)
	// 250 ms of slack for scheduling on a loaded 2-core machine under -race.
	if took > interval+timeout+250*time.Millisecond {
		t.Errorf("down reported after %v, want within HealthInterval + HealthTimeout = %v", took, interval+timeout)
	}
	start := time.Now()
	if err := b.Publish(ctx, "room", []byte("lost")); !errors.Is(err, broadcast.ErrBrokerUnavailable) {
		t.Fatalf("Publish while frozen = %v, want ErrBrokerUnavailable", err)
	}
	if d := time.Since(start); d > 100*time.Millisecond {
		t.Errorf("Publish while frozen took %v, want at once", d)
	}
	for _, p := range b.Health().Parts {
		if p.Up || p.Err == nil {
			t.Errorf("part %+v, want down with a reason", p)
		}
	}

	s.signal(t, syscall.SIGCONT)
	rec.wait(t, "up", isUp)
	if err := b.Publish(ctx, "room", []byte("after")); err != nil {
		t.Fatal(err)
	}
	await(t, got, "after")
}

// TestLogOncePerChange: while Redis is down the broker retries many times,
// but logs one Warn per partition when it goes down (with the reason) and
// one Info when it comes back; the attempts are Debug.
func TestLogOncePerChange(t *testing.T) {
	s := startRedis(t)
	log, logs := observedLogger()
	c := redis.NewClient(&redis.Options{Addr: s.addr(), MaxRetries: -1})
	t.Cleanup(func() { _ = c.Close() })
	b, err := redisbroker.New(c, redisbroker.Options{Partitions: 2, HealthInterval: 100 * time.Millisecond,
		HealthTimeout: 100 * time.Millisecond, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	rec := recordHealth(t, b)
	if n := logs.Len(); n != 0 {
		t.Fatalf("%d log entries from a healthy start, want none: %v", n, logs.All())
	}
	s.stop()
	rec.wait(t, "every partition down", allDown)
	// Let the broker retry several times per partition.
	wstest.WaitFor(t, fleettest.Timeout, "retries", func() bool {
		return logs.FilterMessageSnippet("retrying").Len() >= 10
	})
	s.start(t)
	rec.wait(t, "up", isUp)

	warns := logs.FilterMessage("redis broker partition down").All()
	infos := logs.FilterMessage("redis broker partition back").All()
	if len(warns) != 2 || len(infos) != 2 {
		t.Fatalf("%d down and %d back entries, want 2 and 2 (one per partition and change): %v", len(warns), len(infos), logs.All())
	}
	for _, e := range warns {
		m := e.ContextMap()
		if e.Level.String() != "warn" || m["part"] == nil || m["error"] == nil {
			t.Errorf("down entry %v %v, want Warn with part and error", e.Level, m)
		}
	}
	if warns[0].ContextMap()["part"] == warns[1].ContextMap()["part"] {
		t.Errorf("both down entries name %v", warns[0].ContextMap()["part"])
	}
	for _, e := range infos {
		if e.Level.String() != "info" {
			t.Errorf("back entry at %v, want Info", e.Level)
		}
	}
}

// fnv1a32 is the partition hash written out, so that the test pins it for
// publishers in other languages.
func fnv1a32(s string) uint32 {
	h := uint32(2166136261)
	for i := 0; i < len(s); i++ {
		h ^= uint32(s[i])
		h *= 16777619
	}
	return h
}

// TestChannelNames pins the documented channel names and partition hash.
func TestChannelNames(t *testing.T) {
	s := startRedis(t)
	c := redis.NewClient(&redis.Options{Addr: s.addr(), MaxRetries: -1})
	t.Cleanup(func() { _ = c.Close() })
	for _, tc := range []struct {
		opts redisbroker.Options
		want func(topic string) string
	}{
		{redisbroker.Options{}, func(topic string) string { return "chiws.broadcast." + topic }},
		{redisbroker.Options{ChannelPrefix: "app."}, func(topic string) string { return "app." + topic }},
		{redisbroker.Options{Sharded: true}, func(topic string) string {
			return fmt.Sprintf("{chiws.broadcast.%d}%s", fnv1a32(topic)%16, topic)
		}},
		{redisbroker.Options{Sharded: true, ChannelPrefix: "app.", Partitions: 100}, func(topic string) string {
			return fmt.Sprintf("{app.%d}%s", fnv1a32(topic)%100, topic)
		}},
	} {
		b, err := redisbroker.New(c, tc.opts)
		if err != nil {
			t.Fatal(err)
		}
		parts := len(b.Health().Parts)
		for _, topic := range []string{"room", "room.42", "a", "user:17/inbox"} {
			got, err := b.Channel(topic)
			if err != nil || got != tc.want(topic) {
				t.Errorf("%+v: Channel(%q) = %q, %v; want %q", tc.opts, topic, got, err, tc.want(topic))
			}
			if p := b.Partition(topic); p != int(fnv1a32(topic)%uint32(parts)) {
				t.Errorf("Partition(%q) = %d, want FNV-1a-32 mod %d = %d", topic, p, parts, fnv1a32(topic)%uint32(parts))
			}
		}
		if _, err := b.Channel("a b"); !errors.Is(err, broadcast.ErrInvalidTopic) {
			t.Errorf("Channel(\"a b\") = %v, want ErrInvalidTopic", err)
		}
		_ = b.Close()
	}
	// A literal, in case the hash above and the broker's agree on a bug.
	b, err := redisbroker.New(c, redisbroker.Options{Sharded: true})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if got, _ := b.Channel("room"); got != "{chiws.broadcast.10}room" {
		t.Errorf("Channel(room) = %q, want {chiws.broadcast.10}room (FNV-1a-32 %#x mod 16)", got, fnv1a32("room"))
	}
}

// TestClientOptions: the helpers give the settings the broker needs, keep
// what the URL sets, and reject a bad URL.
func TestClientOptions(t *testing.T) {
	o, err := redisbroker.ClientOptions("redis://127.0.0.1:6379/2")
	if err != nil {
		t.Fatal(err)
	}
	if o.Addr != "127.0.0.1:6379" || o.DB != 2 || o.MaxRetries != -1 || o.DialTimeout != redisbroker.ClientDialTimeout ||
		o.ReadTimeout != redisbroker.ClientReadTimeout || o.WriteTimeout != redisbroker.ClientWriteTimeout || !o.ContextTimeoutEnabled {
		t.Errorf("ClientOptions = %+v", o)
	}
	o, err = redisbroker.ClientOptions("redis://h:1?read_timeout=5s&max_retries=2")
	if err != nil {
		t.Fatal(err)
	}
	if o.ReadTimeout != 5*time.Second || o.MaxRetries != 2 {
		t.Errorf("URL settings not kept: ReadTimeout %v, MaxRetries %d", o.ReadTimeout, o.MaxRetries)
	}
	co, err := redisbroker.ClusterOptions("redis://a:1?addr=b:2&addr=c:3")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(co.Addrs, ",") != "a:1,b:2,c:3" || co.MaxRetries != -1 || co.MaxRedirects != -1 ||
		co.ReadTimeout != redisbroker.ClientReadTimeout || !co.ContextTimeoutEnabled {
		t.Errorf("ClusterOptions = %+v", co)
	}
	for _, bad := range []string{"http://x", "redis://a:1?bogus=1"} {
		if _, err := redisbroker.ClientOptions(bad); err == nil {
			t.Errorf("ClientOptions(%q) succeeded", bad)
		}
		if _, err := redisbroker.ClusterOptions(bad); err == nil {
			t.Errorf("ClusterOptions(%q) succeeded", bad)
		}
	}
}

// TestRetryWarning: New warns once about a client that retries commands
// (go-redis's default), and not about one from ClientOptions.
func TestRetryWarning(t *testing.T) {
	s := startRedis(t)
	o, err := redisbroker.ClientOptions("redis://" + s.addr())
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		client redis.UniversalClient
		warns  int
	}{
		{"default client", redis.NewClient(&redis.Options{Addr: s.addr()}), 1},
		{"ClientOptions", redis.NewClient(o), 0},
		{"MaxRetries -1", redis.NewClient(&redis.Options{Addr: s.addr(), MaxRetries: -1}), 0},
		// The cluster client retries through its redirects by default.
		{"default cluster client", redis.NewClusterClient(&redis.ClusterOptions{Addrs: []string{s.addr()}}), 1},
		{"cluster without redirects", redis.NewClusterClient(&redis.ClusterOptions{Addrs: []string{s.addr()}, MaxRedirects: -1}), 0},
	} {
		log, logs := observedLogger()
		b, err := redisbroker.New(tc.client, redisbroker.Options{Logger: log, HealthTimeout: 200 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		_ = b.Close()
		_ = tc.client.Close()
		if n := logs.FilterMessageSnippet("retries commands").Len(); n != tc.warns {
			t.Errorf("%s: %d retry warnings, want %d", tc.name, n, tc.warns)
		}
	}
}

// TestBadOptions: New rejects each bad setting with an error that names it.
func TestBadOptions(t *testing.T) {
	c := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"})
	defer c.Close()
	cc := redis.NewClusterClient(&redis.ClusterOptions{Addrs: []string{"127.0.0.1:1"}})
	defer cc.Close()
	for _, tc := range []struct {
		client redis.UniversalClient
		opts   redisbroker.Options
		want   string
	}{
		{c, redisbroker.Options{Partitions: -1}, "Partitions"},
		{c, redisbroker.Options{Partitions: redisbroker.MaxPartitions + 1}, "Partitions"},
		{c, redisbroker.Options{HealthInterval: -1}, "HealthInterval"},
		{c, redisbroker.Options{HealthTimeout: -1}, "HealthTimeout"},
		{c, redisbroker.Options{HealthInterval: time.Millisecond}, "HealthInterval"},
		{c, redisbroker.Options{HealthTimeout: 5 * time.Millisecond}, "HealthTimeout"},
		{c, redisbroker.Options{Sharded: true, ClassicPublish: true}, "ClassicPublish"},
		{c, redisbroker.Options{Sharded: true, ChannelPrefix: "app{x}."}, "ChannelPrefix"},
		{cc, redisbroker.Options{ChannelPrefix: "app}."}, "ChannelPrefix"},
	} {
		b, err := redisbroker.New(tc.client, tc.opts) // fails before any I/O
		if err == nil {
			_ = b.Close()
			t.Errorf("New(%+v) succeeded", tc.opts)
		} else if !strings.Contains(err.Error(), tc.want) {
			t.Errorf("New(%+v) = %v, want an error naming %s", tc.opts, err, tc.want)
		}
	}
}

// TestRingRejected: a Ring shards PUBLISH by channel but a pub/sub
// connection by its first channel, which would lose a partition's
// messages; New refuses it.
func TestRingRejected(t *testing.T) {
	r := redis.NewRing(&redis.RingOptions{Addrs: map[string]string{"a": "127.0.0.1:1"}})
	defer r.Close()
	if b, err := redisbroker.New(r, redisbroker.Options{}); err == nil || !strings.Contains(err.Error(), "Ring") {
		if b != nil {
			_ = b.Close()
		}
		t.Fatalf("New(ring) = %v, want an error naming the Ring", err)
	}
}

// TestPartitionsBoundConnections: however many topics, an instance holds
// Partitions pub/sub connections (counted by Redis, CLIENT LIST), plain and
// sharded; every topic still receives.
func TestPartitionsBoundConnections(t *testing.T) {
	s := startRedis(t)
	admin := redis.NewClient(&redis.Options{Addr: s.addr()})
	t.Cleanup(func() { _ = admin.Close() })
	for _, sharded := range []bool{false, true} {
		t.Run(fmt.Sprintf("sharded=%v", sharded), func(t *testing.T) {
			name := fmt.Sprintf("bound-%v", sharded)
			c := redis.NewClient(&redis.Options{Addr: s.addr(), MaxRetries: -1, ClientName: name})
			t.Cleanup(func() { _ = c.Close() })
			b, err := redisbroker.New(c, redisbroker.Options{Partitions: 4, Sharded: sharded})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = b.Close() })
			ctx := timeoutCtx(t)
			h, got := receiver()
			const topics = 2000
			for i := range topics {
				if _, err := b.Subscribe(ctx, fmt.Sprintf("room.%d", i), h); err != nil {
					t.Fatal(err)
				}
			}
			if n := pubsubClients(ctx, t, admin, name); n != 4 {
				t.Fatalf("%d pub/sub connections for %d topics, want 4", n, topics)
			}
			for i := 0; i < topics; i += 97 {
				topic := fmt.Sprintf("room.%d", i)
				if err := b.Publish(ctx, topic, []byte(topic)); err != nil {
					t.Fatal(err)
				}
				await(t, got, topic)
			}
		})
	}
}

// pubsubClients counts the pub/sub connections named name on a server.
func pubsubClients(ctx context.Context, t *testing.T, admin *redis.Client, name string) int {
	t.Helper()
	list, err := admin.Do(ctx, "CLIENT", "LIST", "TYPE", "pubsub").Text()
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, l := range strings.Split(list, "\n") {
		if strings.Contains(" "+l+" ", " name="+name+" ") {
			n++
		}
	}
	return n
}

// TestRawPublish: a publisher outside the broker (a raw go-redis client,
// as another language would) reaches a hub member over a real WebSocket
// by sending an envelope to the documented channel: PUBLISH on
// <prefix><topic>, SPUBLISH on {<prefix><partition>}<topic> when sharded.
// A hand-written version-1 envelope pins the documented bytes.
func TestRawPublish(t *testing.T) {
	s := startRedis(t)
	for _, sharded := range []bool{false, true} {
		t.Run(fmt.Sprintf("sharded=%v", sharded), func(t *testing.T) {
			rawPublishTest(t, redisbroker.Options{Sharded: sharded}, func() redis.UniversalClient {
				return redis.NewClient(&redis.Options{Addr: s.addr(), MaxRetries: -1})
			})
		})
	}
}

// rawPublishTest runs TestRawPublish's steps on clients from newClient.
func rawPublishTest(t *testing.T, opts redisbroker.Options, newClient func() redis.UniversalClient) {
	c := newClient()
	t.Cleanup(func() { _ = c.Close() })
	b, err := redisbroker.New(c, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	f := fleettest.Start(t, []fleettest.Node{{Broker: b}}, broadcast.Options{})
	node := f.Nodes[0]
	cl := node.Dial(t, 0, "room.7")
	node.WaitMembers(t, "room.7", 1) // Join returned: Redis confirmed the subscription

	raw := newClient() // not the broker's
	t.Cleanup(func() { _ = raw.Close() })
	ch, err := b.Channel("room.7")
	if err != nil {
		t.Fatal(err)
	}
	sharded := strings.HasPrefix(ch, "{")
	publish := func(payload []byte) {
		t.Helper()
		ctx := timeoutCtx(t)
		var n int64
		if sharded {
			n, err = raw.SPublish(ctx, ch, payload).Result()
		} else {
			n, err = raw.Publish(ctx, ch, payload).Result()
		}
		if err != nil || n != 1 {
			t.Fatalf("raw publish on %s: %d receivers, %v; want 1", ch, n, err)
		}
	}
	env, err := broadcast.AppendEnvelope(nil, broadcast.Envelope{Type: websocket.MessageText, Payload: []byte("from raw")})
	if err != nil {
		t.Fatal(err)
	}
	publish(env)
	if m := cl.Next(t); m.Typ != websocket.MessageText || m.Data != "from raw" {
		t.Fatalf("member got %v %q, want text %q", m.Typ, m.Data, "from raw")
	}
	publish([]byte("\x01\x01hello")) // version 1, text, payload
	if m := cl.Next(t); m.Typ != websocket.MessageText || m.Data != "hello" {
		t.Fatalf("member got %v %q, want text hello", m.Typ, m.Data)
	}
	publish([]byte("\x01\x02\x00\xff")) // version 1, binary
	if m := cl.Next(t); m.Typ != websocket.MessageBinary || m.Data != "\x00\xff" {
		t.Fatalf("member got %v %q, want binary 00ff", m.Typ, m.Data)
	}
}
