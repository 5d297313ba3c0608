package redisbroker_test

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chiws/chiws/broadcast"
	"github.com/chiws/chiws/broadcast/internal/fleettest"
	"github.com/chiws/chiws/broadcast/redisbroker"
	"github.com/chiws/chiws/internal/wstest"
	"github.com/redis/go-redis/v9"
)

// freeClusterPort returns a loopback port whose cluster bus port (+10000)
// is free too.
func freeClusterPort(t *testing.T) int {
	t.Helper()
	port, err := wstest.FreePort(10000) // a node's cluster bus is port+10000
	if err != nil {
		t.Fatal(err)
	}
	return port
}

// startCluster starts a Redis Cluster of three masters on loopback and
// returns their addresses.
func startCluster(t *testing.T) []string {
	t.Helper()
	startRedisCheck(t)
	if _, err := exec.LookPath("redis-cli"); err != nil {
		t.Skip("redis-cli is not installed (it comes with redis-server)")
	}
	dir := t.TempDir()
	var addrs []string
	for i := range 3 {
		port := freeClusterPort(t)
		addr := "127.0.0.1:" + strconv.Itoa(port)
		cmd := exec.Command("redis-server", "--port", strconv.Itoa(port), "--bind", "127.0.0.1",
			"--save", "", "--appendonly", "no", "--cluster-enabled", "yes",
			"--cluster-config-file", "nodes-"+strconv.Itoa(i)+".conf", "--dir", dir)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan struct{})
		go func() { // owned by the test: the cleanup below kills the process and waits
			_ = cmd.Wait()
			close(done)
		}()
		t.Cleanup(func() {
			_ = cmd.Process.Kill()
			<-done
		})
		waitPing(t, addr)
		addrs = append(addrs, addr)
	}
	ctx, cancel := context.WithTimeout(context.Background(), fleettest.Timeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, "redis-cli", append(append([]string{"--cluster", "create"}, addrs...),
		"--cluster-replicas", "0", "--cluster-yes")...).CombinedOutput()
	if err != nil {
		t.Fatalf("redis-cli --cluster create: %v\n%s", err, out)
	}
	// Every node must see the cluster as ok before clients route by slot.
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for _, addr := range addrs {
		c := redis.NewClient(&redis.Options{Addr: addr})
		for {
			info, _ := c.ClusterInfo(ctx).Result()
			if strings.Contains(info, "cluster_state:ok") {
				break
			}
			select {
			case <-ctx.Done():
				_ = c.Close()
				t.Fatalf("cluster not ok on %s:\n%s", addr, info)
			case <-tick.C:
			}
		}
		_ = c.Close()
	}
	return addrs
}

func waitPing(t *testing.T, addr string) {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1})
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), fleettest.Timeout)
	defer cancel()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for c.Ping(ctx).Err() != nil {
		select {
		case <-ctx.Done():
			t.Fatalf("redis-server %s not answering", addr)
		case <-tick.C:
		}
	}
}

// TestHubOnRedisCluster runs the fleet on a three-master Redis Cluster
// through redis.ClusterClient: sharded pub/sub, one connection per
// partition to the master that owns the partition's slot.
func TestHubOnRedisCluster(t *testing.T) {
	addrs := startCluster(t)
	fleettest.Run(t, func(t *testing.T) []fleettest.Node {
		return newNodes(t, redisbroker.Options{}, func() redis.UniversalClient {
			return redis.NewClusterClient(&redis.ClusterOptions{Addrs: addrs})
		})
	})
}

// TestResubscribeAfterSlotMoves: when the slot of a partition moves to
// another master, Redis unsubscribes its subscribers (a server-side
// SUNSUBSCRIBE); the broker reports that partition down, and no other,
// subscribes again on the new owner, reports it up only once subscribed
// there, and delivers again; another partition delivers all along.
func TestResubscribeAfterSlotMoves(t *testing.T) {
	sc := startShardedRoom(t)
	from, to := sc.owner(t), ""
	for _, id := range sc.ids {
		if id != from {
			to = id
			break
		}
	}
	// As redis-cli --cluster reshard does for a slot without keys.
	sc.do(t, sc.byID[to], "CLUSTER", "SETSLOT", sc.slot, "IMPORTING", from)
	sc.do(t, sc.byID[from], "CLUSTER", "SETSLOT", sc.slot, "MIGRATING", to)
	for _, n := range []*redis.Client{sc.byID[to], sc.byID[from]} {
		sc.do(t, n, "CLUSTER", "SETSLOT", sc.slot, "NODE", to)
	}
	for _, n := range sc.byID {
		sc.do(t, n, "CLUSTER", "SETSLOT", sc.slot, "NODE", to)
	}
	sc.awaitState(t, false)
	sc.awaitState(t, true)
	sc.assertSubscribed(t, sc.byID[to])
	sc.assertDelivers(t)
	sc.assertOnlyRoomPartDown(t)
	sc.assertOtherDelivers(t, "after the move")
}

// TestResubscribeWhenSlotUnserved: while nobody serves a partition's slot,
// that partition stays down (its SSUBSCRIBE is refused with CLUSTERDOWN)
// and Publish to its topics fails at once, while the other partitions
// stay up and deliver; once a master serves the slot again the partition
// subscribes there and reports itself up.
func TestResubscribeWhenSlotUnserved(t *testing.T) {
	sc := startShardedRoom(t)
	owner := sc.owner(t)
	refused := sc.clusterDownReplies(t)
	for _, n := range sc.byID {
		sc.do(t, n, "CLUSTER", "DELSLOTS", sc.slot)
	}
	sc.awaitState(t, false)
	// While the room's partition is down, its topics fail at once and
	// the other partitions work.
	h := sc.b.Health()
	if down := h.Down(); len(down) != 1 || down[0] != sc.roomPart() {
		t.Fatalf("down parts %v, want only %s", down, sc.roomPart())
	}
	start := time.Now()
	if err := sc.b.Publish(sc.ctx, "room", []byte("lost")); !errors.Is(err, broadcast.ErrBrokerUnavailable) {
		t.Fatalf("Publish to the down partition = %v, want ErrBrokerUnavailable", err)
	}
	if d := time.Since(start); d > 100*time.Millisecond {
		t.Errorf("Publish to the down partition took %v, want at once", d)
	}
	sc.assertOtherDelivers(t, "while the room is down")
	// Serve the slot again only once Redis has refused the broker's
	// SSUBSCRIBE at least once.
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for sc.clusterDownReplies(t) == refused {
		select {
		case <-tick.C:
		case <-sc.ctx.Done():
			t.Fatal("the broker never tried to subscribe again")
		}
	}
	sc.do(t, sc.byID[owner], "CLUSTER", "ADDSLOTS", sc.slot)
	sc.awaitState(t, true)
	sc.assertSubscribed(t, sc.byID[owner])
	sc.assertDelivers(t)
	sc.assertOnlyRoomPartDown(t)
}

// shardedRoom is a broker on a three-master cluster with a subscription
// to the topic "room" and one to a topic of another partition.
type shardedRoom struct {
	ctx    context.Context
	cc     *redis.ClusterClient
	b      *redisbroker.Broker
	ch     string
	slot   int64
	ids    []string
	byID   map[string]*redis.Client
	states chan bool
	rec    *healthRecord
	got    chan string

	// other is a topic in another partition, hence another slot, and
	// otherGot receives its messages.
	other    string
	otherGot chan string
}

func startShardedRoom(t *testing.T) *shardedRoom {
	addrs := startCluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), fleettest.Timeout)
	t.Cleanup(cancel)
	sc := &shardedRoom{ctx: ctx, byID: map[string]*redis.Client{},
		got: make(chan string, 64)}
	sc.cc = redis.NewClusterClient(&redis.ClusterOptions{Addrs: addrs, MaxRetries: -1})
	t.Cleanup(func() { _ = sc.cc.Close() })
	b, err := redisbroker.New(sc.cc, redisbroker.Options{HealthInterval: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	sc.b = b
	t.Cleanup(func() { _ = b.Close() })
	if sc.ch, err = b.Channel("room"); err != nil {
		t.Fatal(err)
	}
	sc.states = upEdges(t, b)
	sc.rec = recordHealth(t, b)
	sub, err := b.Subscribe(ctx, "room", func(p []byte) { sc.got <- string(p) })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	for i := 0; sc.other == "" || b.Partition(sc.other) == b.Partition("room"); i++ {
		sc.other = "other." + strconv.Itoa(i)
	}
	var h func([]byte)
	h, sc.otherGot = receiver()
	osub, err := b.Subscribe(ctx, sc.other, h)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = osub.Unsubscribe() })
	if sc.slot, err = sc.cc.ClusterKeySlot(ctx, sc.ch).Result(); err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		n := redis.NewClient(&redis.Options{Addr: a})
		t.Cleanup(func() { _ = n.Close() })
		id, err := n.Do(ctx, "CLUSTER", "MYID").Text()
		if err != nil {
			t.Fatal(err)
		}
		sc.ids = append(sc.ids, id)
		sc.byID[id] = n
	}
	return sc
}

// owner returns the ID of the master that serves the room's slot.
func (sc *shardedRoom) owner(t *testing.T) string {
	t.Helper()
	n, err := sc.cc.MasterForKey(sc.ctx, sc.ch)
	if err != nil {
		t.Fatal(err)
	}
	id, err := n.Do(sc.ctx, "CLUSTER", "MYID").Text()
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func (sc *shardedRoom) do(t *testing.T, n *redis.Client, args ...any) {
	t.Helper()
	if err := n.Do(sc.ctx, args...).Err(); err != nil {
		t.Fatalf("%v: %v", args, err)
	}
}

// clusterDownReplies counts the CLUSTERDOWN errors the nodes replied.
func (sc *shardedRoom) clusterDownReplies(t *testing.T) int {
	t.Helper()
	total := 0
	for _, n := range sc.byID {
		info, err := n.Info(sc.ctx, "errorstats").Result()
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range strings.Split(info, "\n") {
			var c int
			if _, err := fmt.Sscanf(strings.TrimSpace(l), "errorstat_CLUSTERDOWN:count=%d", &c); err == nil {
				total += c
			}
		}
	}
	return total
}

// awaitState waits for the broker's next state report and wants up.
func (sc *shardedRoom) awaitState(t *testing.T, up bool) {
	t.Helper()
	select {
	case got := <-sc.states:
		if got != up {
			t.Fatalf("broker reported up=%v, want %v", got, up)
		}
	case <-sc.ctx.Done():
		t.Fatalf("the broker never reported up=%v", up)
	}
}

// assertSubscribed checks that the node has the room's subscription: the
// broker reported up, so it must.
func (sc *shardedRoom) assertSubscribed(t *testing.T, n *redis.Client) {
	t.Helper()
	counts, err := n.PubSubShardNumSub(sc.ctx, sc.ch).Result()
	if err != nil {
		t.Fatal(err)
	}
	if counts[sc.ch] != 1 {
		t.Fatalf("reported up, but the shard has %d subscribers to %s", counts[sc.ch], sc.ch)
	}
}

// assertDelivers publishes until the room's subscription hears.
func (sc *shardedRoom) assertDelivers(t *testing.T) {
	t.Helper()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for i := 0; ; i++ {
		_ = sc.b.Publish(sc.ctx, "room", []byte(strconv.Itoa(i))) // may fail while the cluster settles
		select {
		case <-sc.got:
			return
		case <-tick.C:
		case <-sc.ctx.Done():
			t.Fatal("no message delivered")
		}
	}
}

// roomPart is the name of the room's partition in Health.
func (sc *shardedRoom) roomPart() string {
	return sc.b.Health().Parts[sc.b.Partition("room")].Name
}

// assertOnlyRoomPartDown checks that no notification so far reported a
// partition other than the room's down.
func (sc *shardedRoom) assertOnlyRoomPartDown(t *testing.T) {
	t.Helper()
	if down := sc.rec.downSeen(); len(down) != 1 || down[0] != sc.roomPart() {
		t.Fatalf("parts reported down: %v, want only the room's (%s)", down, sc.roomPart())
	}
}

// assertOtherDelivers publishes to the other partition's topic once and
// waits for it: that partition stayed up, so it must arrive.
func (sc *shardedRoom) assertOtherDelivers(t *testing.T, msg string) {
	t.Helper()
	if err := sc.b.Publish(sc.ctx, sc.other, []byte(msg)); err != nil {
		t.Fatalf("Publish to %s (another partition): %v", sc.other, err)
	}
	await(t, sc.otherGot, msg)
}

// TestHubOnRedisClusterClassic runs the fleet on a three-master cluster
// with ClassicPublish: PUBLISH and SUBSCRIBE, which the cluster sends to
// every node, on the unsharded channel names.
func TestHubOnRedisClusterClassic(t *testing.T) {
	addrs := startCluster(t)
	fleettest.Run(t, func(t *testing.T) []fleettest.Node {
		nodes := newNodes(t, redisbroker.Options{ClassicPublish: true}, func() redis.UniversalClient {
			return redis.NewClusterClient(&redis.ClusterOptions{Addrs: addrs, MaxRetries: -1})
		})
		b := nodes[0].Broker.(*redisbroker.Broker)
		if ch, _ := b.Channel("room"); ch != redisbroker.DefaultChannelPrefix+"room" {
			t.Fatalf("ClassicPublish channel %q, want the plain name", ch)
		}
		return nodes
	})
}

// TestRawPublishOnCluster: TestRawPublish through a ClusterClient: SPUBLISH
// on the documented hash-tagged channel reaches the member.
func TestRawPublishOnCluster(t *testing.T) {
	addrs := startCluster(t)
	rawPublishTest(t, redisbroker.Options{}, func() redis.UniversalClient {
		return redis.NewClusterClient(&redis.ClusterOptions{Addrs: addrs, MaxRetries: -1})
	})
}

// TestTenThousandTopicsOnCluster is the goal of partitions: 10,000 topics
// on a three-master cluster take at most 64 pub/sub connections for the
// instance (16, the default partitions), counted by Redis itself (CLIENT
// LIST on every master, by the client's name), and a sample of topics
// receives what is published to it.
func TestTenThousandTopicsOnCluster(t *testing.T) {
	addrs := startCluster(t)
	const name = "chiws-ten-thousand"
	cc := redis.NewClusterClient(&redis.ClusterOptions{Addrs: addrs, MaxRetries: -1, ClientName: name})
	t.Cleanup(func() { _ = cc.Close() })
	ctx := timeoutCtx(t)
	admins := make([]*redis.Client, len(addrs))
	usedMemory := func() int64 {
		var total int64
		for _, a := range admins {
			info, err := a.Info(ctx, "memory").Result()
			if err != nil {
				t.Fatal(err)
			}
			for _, l := range strings.Split(info, "\n") {
				if v, ok := strings.CutPrefix(strings.TrimSpace(l), "used_memory:"); ok {
					n, _ := strconv.ParseInt(v, 10, 64)
					total += n
				}
			}
		}
		return total
	}
	for i, a := range addrs {
		admins[i] = redis.NewClient(&redis.Options{Addr: a})
		t.Cleanup(func() { _ = admins[i].Close() })
	}
	memBefore := usedMemory()
	heap := func() uint64 {
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc
	}
	heapBefore := heap()

	b, err := redisbroker.New(cc, redisbroker.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	if !b.Health().Up {
		t.Fatalf("Health at start: %+v", b.Health())
	}
	const topics = 10_000
	h, got := receiver()
	start := time.Now()
	// Eight subscribers at once, as many hubs' joins would be.
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for w := range 8 {
		wg.Add(1)
		go func() { // owned by the test: waited for below
			defer wg.Done()
			for i := w; i < topics; i += 8 {
				if _, err := b.Subscribe(ctx, "room."+strconv.Itoa(i), h); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	t.Logf("%d topics subscribed in %v", topics, time.Since(start))

	conns := 0
	for _, a := range admins {
		conns += pubsubClients(ctx, t, a, name)
	}
	// The heap includes the test's 10,000 subscriptions and, under -race,
	// the detector's shadow state.
	t.Logf("pub/sub connections of the instance (CLIENT LIST on the 3 masters): %d; Redis used_memory grew by %d KiB; Go heap by %d KiB",
		conns, (usedMemory()-memBefore)>>10, int64(heap()-heapBefore)>>10)
	if conns > 64 || conns == 0 {
		t.Fatalf("%d pub/sub connections for %d topics, want 1 to 64", conns, topics)
	}
	for i := 0; i < topics; i += 101 {
		topic := "room." + strconv.Itoa(i)
		if err := b.Publish(ctx, topic, []byte(topic)); err != nil {
			t.Fatal(err)
		}
		await(t, got, topic)
	}
}
