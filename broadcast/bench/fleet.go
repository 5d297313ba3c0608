package main

import (
	"context"
	"encoding/binary"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/chiws/chiws"
	"github.com/chiws/chiws/broadcast"
	"github.com/chiws/chiws/broadcast/natsbroker"
	"github.com/chiws/chiws/broadcast/redisbroker"
	"github.com/chiws/chiws/internal/wstest"
	"github.com/coder/websocket"
	"github.com/redis/go-redis/v9"
)

const topic = "bench"

// bus is three brokers on one message bus, and what stops them.
type bus struct {
	name    string
	brokers []broadcast.Broker
	stop    func()
}

func memoryBus() (*bus, error) {
	b := broadcast.NewMemory()
	return &bus{name: "Memory", brokers: []broadcast.Broker{b, b, b}, stop: func() { _ = b.Close() }}, nil
}

// natsBus is three embedded NATS servers joined by routes, each with an
// in-process connection: the example's -nats-cluster deployment.
func natsBus() (*bus, error) {
	bs := &bus{name: "NATS (3 embedded servers)"}
	var stops []func()
	bs.stop = func() {
		for i := len(stops) - 1; i >= 0; i-- {
			stops[i]()
		}
	}
	var seed string
	var servers []*natsbroker.Embedded
	for i := range 3 {
		o := natsbroker.EmbeddedOptions{ClusterAddr: "127.0.0.1:0"}
		if i > 0 {
			o.Routes = []string{seed}
		}
		e, err := natsbroker.StartEmbedded(o)
		if err != nil {
			bs.stop()
			return nil, err
		}
		stops = append(stops, e.Shutdown)
		if i == 0 {
			seed = e.ClusterURL()
		}
		servers = append(servers, e)
		b, err := e.Connect(natsbroker.Options{})
		if err != nil {
			bs.stop()
			return nil, err
		}
		stops = append(stops, func() { _ = b.Close() })
		bs.brokers = append(bs.brokers, b)
	}
	for _, e := range servers {
		if err := waitUntil(func() bool { return e.Server().NumRoutes() >= 2 }); err != nil {
			bs.stop()
			return nil, fmt.Errorf("NATS cluster not formed: %w", err)
		}
	}
	return bs, nil
}

// redisBus starts redis-server on a loopback port, with a client and a
// broker per node.
func redisBus() (*bus, error) {
	if _, err := exec.LookPath("redis-server"); err != nil {
		return nil, fmt.Errorf("redis-server not installed (apt-get install -y redis-server)")
	}
	port, err := wstest.FreePort()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command("redis-server", "--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no")
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	addr := "127.0.0.1:" + strconv.Itoa(port)
	bs := &bus{name: "Redis 7 (one server)"}
	var stops []func()
	stops = append(stops, func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	bs.stop = func() {
		for i := len(stops) - 1; i >= 0; i-- {
			stops[i]()
		}
	}
	probe := redis.NewClient(&redis.Options{Addr: addr})
	defer probe.Close()
	if err := waitUntil(func() bool { return probe.Ping(context.Background()).Err() == nil }); err != nil {
		bs.stop()
		return nil, fmt.Errorf("redis-server not answering: %w", err)
	}
	for range 3 {
		c := redis.NewClient(&redis.Options{Addr: addr})
		b, err := redisbroker.New(c, redisbroker.Options{})
		if err != nil {
			_ = c.Close()
			bs.stop()
			return nil, err
		}
		stops = append(stops, func() { _ = b.Close(); _ = c.Close() })
		bs.brokers = append(bs.brokers, b)
	}
	return bs, nil
}

// node is a hub behind an httptest server with the middleware.
type node struct {
	hub *broadcast.Hub
	ws  *chiws.Middleware
	srv *httptest.Server
}

func startNode(b broadcast.Broker) *node {
	n := &node{hub: broadcast.NewHub(b, broadcast.Options{}), ws: chiws.New(chiws.Options{})}
	n.srv = httptest.NewServer(n.ws.Handler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := chiws.Accept(w, r, nil)
		if err != nil {
			return
		}
		if _, err := n.hub.Join(c, topic); err != nil {
			_ = c.Close(websocket.StatusTryAgainLater, "")
			return
		}
		// Read until the socket closes (the clients send nothing).
		for {
			if _, _, err := c.Read(c.Context()); err != nil {
				return
			}
		}
	})))
	return n
}

func (n *node) stop() {
	n.srv.CloseClientConnections()
	n.srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_ = n.hub.Shutdown(ctx)
	_ = n.ws.Shutdown(ctx)
}

// client records the latency of every message it receives. Its reader
// goroutine is owned by the run: it ends when the connection closes, and
// the run waits for it.
type client struct {
	probes  atomic.Int64
	c       *websocket.Conn
	lat     []int64
	last    int64 // last sequence number, -1 before any
	ordered bool
}

// recv counts deliveries for the publisher's window.
type recv struct {
	total atomic.Int64
	poke  chan struct{} // size one
}

func (r *recv) add() {
	r.total.Add(1)
	select {
	case r.poke <- struct{}{}:
	default:
	}
}

func (cl *client) read(rv *recv, wg *sync.WaitGroup) {
	defer wg.Done()
	for {
		_, p, err := cl.c.Read(context.Background())
		if err != nil {
			return
		}
		now := time.Now().UnixNano()
		if len(p) < 16 {
			cl.probes.Add(1)
			continue
		}
		seq := int64(binary.BigEndian.Uint64(p))
		sent := int64(binary.BigEndian.Uint64(p[8:]))
		if seq != cl.last+1 {
			cl.ordered = false
		}
		cl.last = seq
		cl.lat = append(cl.lat, now-sent)
		rv.add()
	}
}

func dialAll(nodes []*node, n int) ([]*client, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var clients []*client
	for i := range n {
		nd := nodes[i%len(nodes)]
		u := "ws" + strings.TrimPrefix(nd.srv.URL, "http") + "/"
		c, _, err := websocket.Dial(ctx, u, nil)
		if err != nil {
			for _, cl := range clients {
				_ = cl.c.CloseNow()
			}
			return nil, fmt.Errorf("dial %d: %w", i, err)
		}
		clients = append(clients, &client{c: c, last: -1, ordered: true})
	}
	return clients, nil
}
