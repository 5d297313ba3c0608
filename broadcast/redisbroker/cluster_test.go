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
