package main

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/chiws/chiws"
	"github.com/chiws/chiws/broadcast"
	"github.com/chiws/chiws/broadcast/natsbroker"
	"github.com/chiws/chiws/broadcast/redisbroker"
	"github.com/chiws/chiws/internal/wstest"
	"github.com/coder/websocket"
	"github.com/redis/go-redis/v9"
)

// bus is three brokers on one message bus, and what stops them.
type bus struct {
	name    string
	brokers []broadcast.Broker
	redis   redis.UniversalClient // Redis buses: a client of their own, for the pipelined publish
	nats    []string              // NATS buses: the servers' client URLs (TCP on loopback)
	pids    []int                 // redis-server processes, for their CPU time
	stop    func()
}

// namedBus is a bus constructor and the name its rows carry.
type namedBus struct {
	key  string // for -brokers
	name string
	new  func() (*bus, error)
}

var (
	memoryNamed  = namedBus{"memory", "Memory", memoryBus}
	natsNamed    = namedBus{"nats", "NATS (3 embedded servers, routes)", natsBus}
	redisNamed   = namedBus{"redis", "Redis (one redis-server)", redisBus}
	clusterNamed = namedBus{"cluster", "Redis Cluster (3 masters, sharded)", clusterBus}
)

func memoryBus() (*bus, error) {
	b := broadcast.NewMemory()
	return &bus{name: "Memory", brokers: []broadcast.Broker{b, b, b}, stop: func() { _ = b.Close() }}, nil
}

// stopper runs its functions in reverse order.
type stopper []func()

func (s *stopper) add(f func()) { *s = append(*s, f) }
func (s *stopper) run() {
	for i := len(*s) - 1; i >= 0; i-- {
		(*s)[i]()
	}
	*s = nil
}

// natsBus is three embedded NATS servers joined by routes, each with an
// in-process connection: the example's -nats-cluster deployment.
func natsBus() (*bus, error) {
	bs := &bus{name: "NATS"}
	var st stopper
	bs.stop = st.run
	var seed string
	var servers []*natsbroker.Embedded
	for i := range 3 {
		o := natsbroker.EmbeddedOptions{ClusterAddr: "127.0.0.1:0"}
		if i > 0 {
			o.Routes = []string{seed}
		}
		e, err := natsbroker.StartEmbedded(o)
		if err != nil {
			st.run()
			return nil, err
		}
		st.add(e.Shutdown)
		if i == 0 {
			seed = e.ClusterURL()
		}
		servers = append(servers, e)
		bs.nats = append(bs.nats, e.ClientURL())
		b, err := e.Connect(natsbroker.Options{})
		if err != nil {
			st.run()
			return nil, err
		}
		st.add(func() { _ = b.Close() })
		bs.brokers = append(bs.brokers, b)
	}
	bs.stop = st.run
	for _, e := range servers {
		if err := waitUntil(func() bool { return e.Server().NumRoutes() >= 2 }); err != nil {
			st.run()
			return nil, fmt.Errorf("NATS cluster not formed: %w", err)
		}
	}
	return bs, nil
}

// startRedis starts redis-server on a free loopback port with extra
// arguments, and returns its address.
func startRedis(st *stopper, bs *bus, offsets []int, extra ...string) (string, error) {
	if _, err := exec.LookPath("redis-server"); err != nil {
		return "", fmt.Errorf("redis-server not installed (apt-get install -y redis-server)")
	}
	port, err := wstest.FreePort(offsets...)
	if err != nil {
		return "", err
	}
	args := append([]string{"--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"}, extra...)
	cmd := exec.Command("redis-server", args...)
	if err := cmd.Start(); err != nil {
		return "", err
	}
	st.add(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	bs.pids = append(bs.pids, cmd.Process.Pid)
	addr := "127.0.0.1:" + strconv.Itoa(port)
	probe := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1})
	defer probe.Close()
	if err := waitUntil(func() bool { return probe.Ping(context.Background()).Err() == nil }); err != nil {
		return "", fmt.Errorf("redis-server %s not answering: %w", addr, err)
	}
	return addr, nil
}

// redisBus starts one redis-server, with a client and a broker per node
// (the package's ClientOptions: no retries).
func redisBus() (*bus, error) {
	bs := &bus{name: "Redis"}
	var st stopper
	bs.stop = st.run
	addr, err := startRedis(&st, bs, nil)
	if err != nil {
		st.run()
		return nil, err
	}
	newClient := func() (redis.UniversalClient, error) {
		o, err := redisbroker.ClientOptions("redis://" + addr)
		if err != nil {
			return nil, err
		}
		return redis.NewClient(o), nil
	}
	return finishRedis(bs, &st, newClient)
}

// clusterBus starts a Redis Cluster of three masters on loopback (as
// broadcast/redisbroker's cluster test does), with a cluster client and a
// broker per node: sharded pub/sub, the broker's partitions.
func clusterBus() (*bus, error) {
	bs := &bus{name: "Redis Cluster"}
	var st stopper
	bs.stop = st.run
	if _, err := exec.LookPath("redis-cli"); err != nil {
		return nil, fmt.Errorf("redis-cli not installed (it comes with redis-server)")
	}
	dir, err := os.MkdirTemp("", "broadcast-bench-cluster")
	if err != nil {
		return nil, err
	}
	st.add(func() { _ = os.RemoveAll(dir) })
	var addrs []string
	for i := range 3 {
		addr, err := startRedis(&st, bs, []int{10000}, "--cluster-enabled", "yes",
			"--cluster-config-file", "nodes-"+strconv.Itoa(i)+".conf", "--dir", dir)
		if err != nil {
			st.run()
			return nil, err
		}
		addrs = append(addrs, addr)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "redis-cli", append(append([]string{"--cluster", "create"}, addrs...),
		"--cluster-replicas", "0", "--cluster-yes")...).CombinedOutput()
	if err != nil {
		st.run()
		return nil, fmt.Errorf("redis-cli --cluster create: %v: %s", err, out)
	}
	for _, addr := range addrs {
		c := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1})
		err := waitUntil(func() bool {
			info, _ := c.ClusterInfo(ctx).Result()
			return strings.Contains(info, "cluster_state:ok")
		})
		_ = c.Close()
		if err != nil {
			st.run()
			return nil, fmt.Errorf("cluster not ok on %s", addr)
		}
	}
	url := "redis://" + addrs[0] + "?addr=" + addrs[1] + "&addr=" + addrs[2]
	newClient := func() (redis.UniversalClient, error) {
		o, err := redisbroker.ClusterOptions(url)
		if err != nil {
			return nil, err
		}
		return redis.NewClusterClient(o), nil
	}
	return finishRedis(bs, &st, newClient)
}

func finishRedis(bs *bus, st *stopper, newClient func() (redis.UniversalClient, error)) (*bus, error) {
	for range 3 {
		c, err := newClient()
		if err != nil {
			st.run()
			return nil, err
		}
		b, err := redisbroker.New(c, redisbroker.Options{})
		if err != nil {
			_ = c.Close()
			st.run()
			return nil, err
		}
		st.add(func() { _ = b.Close(); _ = c.Close() })
		bs.brokers = append(bs.brokers, b)
	}
	c, err := newClient()
	if err != nil {
		st.run()
		return nil, err
	}
	st.add(func() { _ = c.Close() })
	bs.redis = c
	return bs, nil
}

// node is a hub behind an httptest server with the middleware. Stable
// sockets (?i=N) are accepted and kept in conns, not joined: the row
// writes to them in a plain loop first, then joins them to the hub.
// Churning sockets (?churn=TOPIC) join at once, and subscribe ("s T") and
// unsubscribe ("u T") as their client asks.
type node struct {
	hub *broadcast.Hub
	ws  *chiws.Middleware
	srv *httptest.Server

	mu    sync.Mutex
	conns map[int]*chiws.Conn
}

func startNode(b broadcast.Broker) *node {
	n := &node{hub: broadcast.NewHub(b, broadcast.Options{}), ws: chiws.New(chiws.Options{}), conns: make(map[int]*chiws.Conn)}
	n.srv = httptest.NewServer(n.ws.Handler(http.HandlerFunc(n.serve)))
	return n
}

func (n *node) serve(w http.ResponseWriter, r *http.Request) {
	c, err := chiws.Accept(w, r, nil)
	if err != nil {
		return
	}
	if t := r.URL.Query().Get("churn"); t != "" {
		n.churner(c, t)
		return
	}
	i, err := strconv.Atoi(r.URL.Query().Get("i"))
	if err != nil {
		_ = c.Close(websocket.StatusPolicyViolation, "no i")
		return
	}
	n.mu.Lock()
	n.conns[i] = c
	n.mu.Unlock()
	defer func() {
		n.mu.Lock()
		delete(n.conns, i)
		n.mu.Unlock()
	}()
	// Read until the socket closes (the clients send nothing).
	for {
		if _, _, err := c.Read(c.Context()); err != nil {
			return
		}
	}
}

func (n *node) churner(c *chiws.Conn, topic string) {
	m, err := n.hub.Join(c, topic)
	if err != nil {
		_ = c.Close(websocket.StatusTryAgainLater, "")
		return
	}
	for {
		_, p, err := c.Read(c.Context())
		if err != nil {
			return
		}
		op, t, _ := strings.Cut(string(p), " ")
		switch op {
		case "s":
			_ = m.Subscribe(t)
		case "u":
			_ = m.Unsubscribe(t)
		}
	}
}

func (n *node) count() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return len(n.conns)
}

func (n *node) url() string { return "ws" + strings.TrimPrefix(n.srv.URL, "http") }

func (n *node) stop() {
	n.srv.CloseClientConnections()
	n.srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_ = n.hub.Shutdown(ctx)
	_ = n.ws.Shutdown(ctx)
}

func waitUntil(cond func() bool) error {
	deadline := time.Now().Add(30 * time.Second)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out")
		}
		<-tick.C
	}
	return nil
}
