package redisbroker_test

import (
	"context"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

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
// through redis.ClusterClient: sharded pub/sub, one connection per topic
// to the shard that owns it.
func TestHubOnRedisCluster(t *testing.T) {
	addrs := startCluster(t)
	fleettest.Run(t, func(t *testing.T) []fleettest.Node {
		return newNodes(t, redisbroker.Options{}, func() redis.UniversalClient {
			return redis.NewClusterClient(&redis.ClusterOptions{Addrs: addrs})
		})
	})
}

// TestResubscribeAfterSlotMoves: when the slot of a sharded channel moves
// to another master, Redis unsubscribes the channel's subscribers (a
// server-side SUNSUBSCRIBE); the broker reports itself down, subscribes
// again on the new owner, reports itself up, and delivers again.
func TestResubscribeAfterSlotMoves(t *testing.T) {
	addrs := startCluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), fleettest.Timeout)
	defer cancel()
	cc := redis.NewClusterClient(&redis.ClusterOptions{Addrs: addrs, MaxRetries: -1})
	defer cc.Close()
	b, err := redisbroker.New(cc, redisbroker.Options{HealthInterval: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	states := make(chan bool, 16)
	defer b.NotifyState(func(up bool) { states <- up })()
	got := make(chan string, 64)
	sub, err := b.Subscribe(ctx, "room", func(p []byte) { got <- string(p) })
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()

	// Move the channel's slot from its owner to another master, as
	// redis-cli --cluster reshard does for a slot without keys.
	ch := redisbroker.DefaultChannelPrefix + "room"
	slot, err := cc.ClusterKeySlot(ctx, ch).Result()
	if err != nil {
		t.Fatal(err)
	}
	owner, err := cc.MasterForKey(ctx, ch)
	if err != nil {
		t.Fatal(err)
	}
	ids := map[string]string{}
	var nodes []*redis.Client
	for _, a := range addrs {
		n := redis.NewClient(&redis.Options{Addr: a})
		defer n.Close()
		id, err := n.Do(ctx, "CLUSTER", "MYID").Text()
		if err != nil {
			t.Fatal(err)
		}
		ids[a] = id
		nodes = append(nodes, n)
	}
	from := ids[owner.Options().Addr]
	var to string
	var target *redis.Client
	for i, a := range addrs {
		if ids[a] != from {
			to, target = ids[a], nodes[i]
			break
		}
	}
	if err := target.Do(ctx, "CLUSTER", "SETSLOT", slot, "IMPORTING", from).Err(); err != nil {
		t.Fatal(err)
	}
	if err := owner.Do(ctx, "CLUSTER", "SETSLOT", slot, "MIGRATING", to).Err(); err != nil {
		t.Fatal(err)
	}
	for _, n := range append([]*redis.Client{target, owner}, nodes...) {
		if err := n.Do(ctx, "CLUSTER", "SETSLOT", slot, "NODE", to).Err(); err != nil {
			t.Fatal(err)
		}
	}

	select {
	case up := <-states:
		if up {
			t.Fatal("broker reported up, want down while it resubscribes")
		}
	case <-ctx.Done():
		t.Fatal("the broker never noticed that its channel moved")
	}
	select {
	case up := <-states:
		if !up {
			t.Fatal("broker reported down twice")
		}
	case <-ctx.Done():
		t.Fatal("the broker never subscribed again")
	}
	// Publishes go to the new owner (go-redis follows MOVED): the
	// subscription must be there.
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for i := 0; ; i++ {
		if err := b.Publish(ctx, "room", []byte(strconv.Itoa(i))); err != nil && ctx.Err() != nil {
			t.Fatal(err)
		}
		select {
		case <-got:
			return
		case <-tick.C:
		case <-ctx.Done():
			t.Fatal("no message delivered after the slot moved")
		}
	}
}
