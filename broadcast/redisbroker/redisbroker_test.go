package redisbroker_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"slices"
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

// redisServer is a redis-server process on a loopback port.
type redisServer struct {
	port int
	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{} // closed when cmd has been waited for
}

// startRedis starts redis-server on a free loopback port, without
// persistence. Without redis-server the test is skipped, or fails under
// CI=true or CHIWS_E2E=1 (as .ci/run sets).
func startRedis(t *testing.T) *redisServer {
	t.Helper()
	s := reserveRedis(t)
	s.start(t)
	return s
}

// reserveRedis returns a server on a free loopback port, not started:
// nothing listens there until start.
func reserveRedis(t *testing.T) *redisServer {
	t.Helper()
	startRedisCheck(t)
	port, err := wstest.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	s := &redisServer{port: port}
	t.Cleanup(s.stop)
	return s
}

// signal sends sig to the server's process (SIGSTOP freezes it: its
// connections stay open and silent).
func (s *redisServer) signal(t *testing.T, sig os.Signal) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.cmd.Process.Signal(sig); err != nil {
		t.Fatal(err)
	}
}

func (s *redisServer) addr() string { return "127.0.0.1:" + strconv.Itoa(s.port) }

func (s *redisServer) start(t *testing.T) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	cmd := exec.Command("redis-server", "--port", strconv.Itoa(s.port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--protected-mode", "no", "--enable-debug-command", "local")
	if err := cmd.Start(); err != nil {
		t.Fatalf("start redis-server: %v", err)
	}
	done := make(chan struct{})
	go func() { // owned by the server: stop waits for it
		_ = cmd.Wait()
		close(done)
	}()
	s.cmd, s.done = cmd, done
	// Wait until it answers.
	c := redis.NewClient(&redis.Options{Addr: s.addr(), MaxRetries: -1})
	defer c.Close()
	deadline := time.NewTimer(fleettest.Timeout)
	defer deadline.Stop()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for c.Ping(context.Background()).Err() != nil {
		select {
		case <-done:
			t.Fatal("redis-server exited at start")
		case <-deadline.C:
			t.Fatal("redis-server not answering")
		case <-tick.C:
		}
	}
}

// stop kills the server and waits for it.
func (s *redisServer) stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Kill()
	<-s.done
	s.cmd = nil
}

// nodes returns three nodes, each with its own client and broker, on s.
func (s *redisServer) nodes(t *testing.T, opts redisbroker.Options) []fleettest.Node {
	t.Helper()
	return newNodes(t, opts, func() redis.UniversalClient {
		return redis.NewClient(&redis.Options{Addr: s.addr(), MaxRetries: -1})
	})
}

// newNodes returns three nodes, each with a client from newClient and a
// broker on it; stopping a node closes both.
func newNodes(t *testing.T, opts redisbroker.Options, newClient func() redis.UniversalClient) []fleettest.Node {
	t.Helper()
	var nodes []fleettest.Node
	for range 3 {
		c := newClient()
		b, err := redisbroker.New(c, opts)
		if err != nil {
			t.Fatal(err)
		}
		var once sync.Once
		stop := func() {
			once.Do(func() {
				_ = b.Close()
				_ = c.Close()
			})
		}
		t.Cleanup(stop)
		nodes = append(nodes, fleettest.Node{Broker: b, Stop: stop})
	}
	return nodes
}

func TestHubOnRedis(t *testing.T) {
	s := startRedis(t)
	fleettest.Run(t, func(t *testing.T) []fleettest.Node { return s.nodes(t, redisbroker.Options{}) })
}

// TestHubOnShardedPubSub runs sharded pub/sub (what a Redis Cluster uses)
// against one Redis 7 server, which accepts SSUBSCRIBE too.
func TestHubOnShardedPubSub(t *testing.T) {
	s := startRedis(t)
	fleettest.Run(t, func(t *testing.T) []fleettest.Node { return s.nodes(t, redisbroker.Options{Sharded: true}) })
}

func TestRedisRestart(t *testing.T) {
	for _, sharded := range []bool{false, true} {
		t.Run(fmt.Sprintf("sharded=%v", sharded), func(t *testing.T) {
			s := startRedis(t)
			opts := redisbroker.Options{Sharded: sharded, HealthInterval: time.Second, HealthTimeout: time.Second}
			fleettest.RunOutage(t, s.nodes(t, opts), func(t *testing.T) func() {
				s.stop()
				return func() { s.start(t) }
			})
		})
	}
}

func TestBadInput(t *testing.T) {
	s := startRedis(t)
	c := redis.NewClient(&redis.Options{Addr: s.addr()})
	defer c.Close()
	b, err := redisbroker.New(c, redisbroker.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	ctx := context.Background()
	if err := b.Publish(ctx, "a.*", nil); !errors.Is(err, broadcast.ErrInvalidTopic) {
		t.Errorf("Publish(a.*) = %v, want ErrInvalidTopic", err)
	}
	if _, err := b.Subscribe(ctx, "", func([]byte) {}); !errors.Is(err, broadcast.ErrInvalidTopic) {
		t.Errorf("Subscribe(\"\") = %v, want ErrInvalidTopic", err)
	}
	if _, err := redisbroker.New(nil, redisbroker.Options{}); err == nil {
		t.Error("New(nil) succeeded")
	}
	if _, err := redisbroker.New(c, redisbroker.Options{HealthInterval: -1}); err == nil {
		t.Error("New with a negative HealthInterval succeeded")
	}
	_ = b.Close()
	if err := b.Publish(ctx, "a", nil); !errors.Is(err, broadcast.ErrBrokerClosed) {
		t.Errorf("Publish after Close = %v, want ErrBrokerClosed", err)
	}
}

// startRedisCheck skips the test without redis-server, or fails it under
// CI=true or CHIWS_E2E=1.
func startRedisCheck(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		if os.Getenv("CI") == "true" || os.Getenv("CHIWS_E2E") == "1" {
			t.Fatal("redis-server is not installed: apt-get install -y redis-server")
		}
		t.Skip("redis-server is not installed: apt-get install -y redis-server")
	}
}

// TestLeaveAndJoinAtOnce: the last subscriber of a channel leaving while a
// new one joins must not leave the new one confirmed but unsubscribed on
// the server (the UNSUBSCRIBE overtaking the SUBSCRIBE). Plain and sharded
// pub/sub: both share a partition's connection between channels.
func TestLeaveAndJoinAtOnce(t *testing.T) {
	s := startRedis(t)
	for _, sharded := range []bool{false, true} {
		t.Run(fmt.Sprintf("sharded=%v", sharded), func(t *testing.T) { leaveAndJoin(t, s, sharded) })
	}
}

func leaveAndJoin(t *testing.T, s *redisServer, sharded bool) {
	c := redis.NewClient(&redis.Options{Addr: s.addr()})
	defer c.Close()
	b, err := redisbroker.New(c, redisbroker.Options{Sharded: sharded})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for i := range 2000 {
		s1, err := b.Subscribe(ctx, "room", func([]byte) {})
		if err != nil {
			t.Fatal(err)
		}
		left := make(chan struct{})
		go func() { // owned by this iteration, which waits on left
			defer close(left)
			_ = s1.Unsubscribe()
		}()
		for range i % 8 { // vary the interleaving of the two
			runtime.Gosched()
		}
		got := make(chan struct{}, 1)
		s2, err := b.Subscribe(ctx, "room", func([]byte) {
			select {
			case got <- struct{}{}:
			default:
			}
		})
		if err != nil {
			t.Fatal(err)
		}
		<-left
		if err := b.Publish(ctx, "room", []byte("x")); err != nil {
			t.Fatal(err)
		}
		select {
		case <-got:
		case <-time.After(5 * time.Second):
			t.Fatalf("iteration %d: a confirmed subscription received nothing", i)
		}
		_ = s2.Unsubscribe()
	}
}

// TestSilentConnectionReplaced: a pub/sub connection that goes silent
// without an error (a route that black-holes it; TCP would give up only
// after many minutes) is reported down after an unanswered ping, replaced
// by a new connection subscribed to the same channels, and reported up
// once Redis confirms; messages flow again. Plain and sharded pub/sub.
func TestSilentConnectionReplaced(t *testing.T) {
	for _, sharded := range []bool{false, true} {
		t.Run(fmt.Sprintf("sharded=%v", sharded), func(t *testing.T) {
			proxy, b, states := behindProxy(t, sharded)
			ctx, cancel := context.WithTimeout(context.Background(), fleettest.Timeout)
			defer cancel()
			got := make(chan string, 64)
			sub, err := b.Subscribe(ctx, "room", func(p []byte) { got <- string(p) })
			if err != nil {
				t.Fatal(err)
			}
			defer sub.Unsubscribe()

			proxy.StallExisting()
			awaitDownThenUp(ctx, t, states, nil)
			tick := time.NewTicker(50 * time.Millisecond)
			defer tick.Stop()
			for i := 0; ; i++ {
				_ = b.Publish(ctx, "room", []byte(strconv.Itoa(i))) // the client's pooled connections are stalled too
				select {
				case <-got:
					return
				case <-tick.C:
				case <-ctx.Done():
					t.Fatal("no message delivered on the new connection")
				}
			}
		})
	}
}

// TestSilentConnectionLastChannelLeft: when the last channel of a silent
// connection is left while the broker replaces the connection, the new
// one has nothing to confirm, and the broker reports up on its first
// answer instead of waiting for a confirmation that never comes.
func TestSilentConnectionLastChannelLeft(t *testing.T) {
	proxy, b, states := behindProxy(t, false)
	ctx, cancel := context.WithTimeout(context.Background(), fleettest.Timeout)
	defer cancel()
	sub, err := b.Subscribe(ctx, "room", func([]byte) {})
	if err != nil {
		t.Fatal(err)
	}
	proxy.StallExisting()
	awaitDownThenUp(ctx, t, states, func() { _ = sub.Unsubscribe() }) // the last channel, while the broker redials
	if err := b.Publish(ctx, "other", []byte("x")); err != nil {
		t.Fatalf("Publish after the broker came back: %v", err)
	}
}

// behindProxy returns a broker whose client reaches a new redis-server
// through a proxy, with short timeouts, and the channel its state reports
// go to.
func behindProxy(t *testing.T, sharded bool) (*wstest.Proxy, *redisbroker.Broker, chan bool) {
	t.Helper()
	s := startRedis(t)
	proxy, err := wstest.NewProxy(s.addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = proxy.Close() })
	c := redis.NewClient(&redis.Options{Addr: proxy.Addr(), MaxRetries: -1,
		DialTimeout: time.Second, ReadTimeout: 500 * time.Millisecond, WriteTimeout: 500 * time.Millisecond})
	t.Cleanup(func() { _ = c.Close() })
	b, err := redisbroker.New(c, redisbroker.Options{Sharded: sharded, HealthInterval: 200 * time.Millisecond, HealthTimeout: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	return proxy, b, upEdges(t, b)
}

// upEdges returns a channel that receives the broker's Health.Up each time
// it changes, from its state when upEdges is called.
func upEdges(t *testing.T, b *redisbroker.Broker) chan bool {
	t.Helper()
	states := make(chan bool, 64)
	up := b.Health().Up // written only by the callbacks, which the broker serialises
	t.Cleanup(b.NotifyHealth(func(h broadcast.Health) {
		if h.Up == up {
			return
		}
		up = h.Up
		select {
		case states <- up:
		default: // never blocks the broker; 64 is far more than a test sees
		}
	}))
	return states
}

// awaitDownThenUp waits for the broker to report down, runs onDown, if
// any, and waits for it to report up.
func awaitDownThenUp(ctx context.Context, t *testing.T, states chan bool, onDown func()) {
	t.Helper()
	for _, want := range []bool{false, true} {
		select {
		case up := <-states:
			if up != want {
				t.Fatalf("broker reported up=%v, want %v", up, want)
			}
			if !up && onDown != nil {
				onDown()
			}
		case <-ctx.Done():
			t.Fatalf("the broker never reported up=%v", want)
		}
	}
}

// TestStalledServerKeepsSubscription: a server that answers nobody for a
// while (DEBUG SLEEP stands for a long script) is not a dead route: the
// broker reports itself down while its ping goes unanswered, but keeps its
// pub/sub connection, and reports up when the server answers again.
func TestStalledServerKeepsSubscription(t *testing.T) {
	s := startRedis(t)
	c := redis.NewClient(&redis.Options{Addr: s.addr(), MaxRetries: -1})
	defer c.Close()
	b, err := redisbroker.New(c, redisbroker.Options{HealthInterval: 200 * time.Millisecond, HealthTimeout: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	states := upEdges(t, b)
	ctx, cancel := context.WithTimeout(context.Background(), fleettest.Timeout)
	defer cancel()
	sub, err := b.Subscribe(ctx, "room", func([]byte) {})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	admin := redis.NewClient(&redis.Options{Addr: s.addr(), ReadTimeout: 10 * time.Second})
	defer admin.Close()
	subscribers := func() string {
		list, err := admin.Do(ctx, "CLIENT", "LIST", "TYPE", "pubsub").Text()
		if err != nil {
			t.Fatal(err)
		}
		var ids []string
		for _, l := range strings.Split(strings.TrimSpace(list), "\n") {
			ids = append(ids, strings.Fields(l)[0]) // id=N
		}
		slices.Sort(ids) // CLIENT LIST's order is not stable
		return strings.Join(ids, " ")
	}
	before := subscribers()
	slept := make(chan error, 1)
	go func() { slept <- admin.Do(ctx, "DEBUG", "SLEEP", "2").Err() }() // received below
	awaitDownThenUp(ctx, t, states, nil)
	if err := <-slept; err != nil {
		t.Fatal(err)
	}
	if after := subscribers(); after != before {
		t.Errorf("pub/sub clients %q after the stall, %q before: the subscription was replaced", after, before)
	}
}

// brokerClient returns a client of s built as the docs say, from
// ClientOptions, closed when the test ends.
func brokerClient(t *testing.T, s *redisServer) *redis.Client {
	t.Helper()
	o, err := redisbroker.ClientOptions("redis://" + s.addr())
	if err != nil {
		t.Fatal(err)
	}
	c := redis.NewClient(o)
	t.Cleanup(func() { _ = c.Close() })
	return c
}
