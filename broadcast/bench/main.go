// Command bench measures broadcast on each broker: one publisher to 1,000
// sockets across three nodes (hubs behind httptest servers with the chiws
// middleware, real coder/websocket clients on loopback), and the broker's
// own cost per message. It writes a Markdown section into -out, between
// markers, leaving the rest of the file as it is:
//
//	go run ./broadcast/bench -out docs/benchmarks.md
package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/chiws/chiws/broadcast"
	"github.com/coder/websocket"
)

// config is one run's size.
type config struct {
	clients int           // sockets across the three nodes
	burst   int           // messages of the saturation phase
	window  int           // messages in flight in the saturation phase
	rate    int           // messages per second of the paced phase
	paced   time.Duration // length of the paced phase
	size    int           // payload bytes
	cost    int           // messages of the broker-cost measurement
}

var defaults = config{clients: 1000, burst: 2000, window: 32, rate: 50, paced: 4 * time.Second, size: 128, cost: 20000}

func main() {
	out := flag.String("out", "", "Markdown file to write the section into (default: stdout)")
	flag.IntVar(&defaults.clients, "clients", defaults.clients, "sockets across the three nodes")
	flag.IntVar(&defaults.burst, "burst", defaults.burst, "messages in the saturation phase")
	flag.Parse()
	var buf bytes.Buffer
	if err := run(&buf, defaults, allBuses); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
	if *out == "" {
		_, _ = os.Stdout.Write(buf.Bytes())
		return
	}
	if err := splice(*out, buf.String()); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

const (
	beginMarker = "<!-- broadcast bench: begin (go run ./broadcast/bench -out docs/benchmarks.md) -->"
	endMarker   = "<!-- broadcast bench: end -->"
)

// splice replaces the section between the markers in file, or appends it.
func splice(file, section string) error {
	old, err := os.ReadFile(file)
	if err != nil && !os.IsNotExist(err) {
		return err
	}
	s := string(old)
	block := beginMarker + "\n" + section + endMarker + "\n"
	if i, j := strings.Index(s, beginMarker), strings.Index(s, endMarker); i >= 0 && j > i {
		s = s[:i] + block + s[j+len(endMarker)+1:]
	} else {
		if s != "" && !strings.HasSuffix(s, "\n\n") {
			s += "\n"
		}
		s += block
	}
	return os.WriteFile(file, []byte(s), 0o644)
}

// result is one broker's figures.
type result struct {
	name                 string
	err                  error
	deliveries           float64 // per second, saturation phase
	cpuPerDelivery       time.Duration
	p50, p99, max        time.Duration
	pacedP50, pacedP99   time.Duration
	pacedMax             time.Duration
	ordered              bool
	slow                 uint64
	costNs, costCPU      float64 // per message
	costAllocs, costByte float64
}

// namedBus is a bus constructor and the name its results carry.
type namedBus struct {
	name string
	new  func() (*bus, error)
}

var allBuses = []namedBus{
	{"Memory", memoryBus},
	{"NATS (3 embedded servers joined by routes)", natsBus},
	{"Redis 7 (one redis-server)", redisBus},
}

func run(w io.Writer, cfg config, buses []namedBus) error {
	start := time.Now()
	var results []result
	for _, b := range buses {
		r := measure(cfg, b.new)
		r.name = b.name
		results = append(results, r)
	}
	fmt.Fprintf(w, "## 8. Broadcast (broadcast.Hub, %d sockets across 3 nodes)\n\n", cfg.clients)
	fmt.Fprintf(w, "Machine: %d CPUs (GOMAXPROCS %d), %s, %s/%s. Run on %s, took %s.\n",
		runtime.NumCPU(), runtime.GOMAXPROCS(0), runtime.Version(), runtime.GOOS, runtime.GOARCH,
		start.UTC().Format("2006-01-02 15:04 UTC"), time.Since(start).Round(time.Second))
	fmt.Fprintf(w, "Three hubs, each behind an httptest server with the chiws middleware, in one process; "+
		"%d coder/websocket clients spread over them; one publisher (a goroutine calling Hub.Publish on node 1) "+
		"sends %d-byte binary messages carrying a sequence number and a timestamp. Everything is on loopback "+
		"and shares the same cores, so the figures are the whole system's, servers included. The machine is shared and noisy: "+
		"successive runs of this section have differed by up to a factor of two in saturation throughput, so read orders of "+
		"magnitude, not the ranking of close figures.\n\n", cfg.clients, cfg.size)
	fmt.Fprintf(w, "- **Saturation**: %d messages with at most %d in flight (the publisher waits until every socket has "+
		"message i-%d before sending i). Deliveries per second = messages x sockets / time.\n", cfg.burst, cfg.window, cfg.window)
	fmt.Fprintf(w, "- **Paced**: %d messages per second for %s (%d deliveries per second); latency from Publish to the client's Read.\n",
		cfg.rate, cfg.paced, cfg.rate*cfg.clients)
	fmt.Fprintf(w, "- **Broker cost**: %d messages published on node 1's broker to one subscription on node 2's "+
		"(no hub, no socket), one after the other; wall time, CPU time of this process and allocations per message. "+
		"Redis's own CPU (another process) is not included.\n\n", cfg.cost)
	fmt.Fprintf(w, "| Broker | Saturation deliveries/s | CPU per delivery | p50 | p99 | max | Paced p50 | Paced p99 | Paced max | In order | Closed as slow |\n")
	fmt.Fprintf(w, "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |\n")
	for _, r := range results {
		if r.err != nil {
			fmt.Fprintf(w, "| %s | not run: %v | | | | | | | | | |\n", r.name, r.err)
			continue
		}
		fmt.Fprintf(w, "| %s | %.0f | %.1f µs | %s | %s | %s | %s | %s | %s | %v | %d |\n", r.name, r.deliveries,
			float64(r.cpuPerDelivery)/1e3, ms(r.p50), ms(r.p99), ms(r.max), ms(r.pacedP50), ms(r.pacedP99), ms(r.pacedMax), yes(r.ordered), r.slow)
	}
	fmt.Fprintf(w, "\n| Broker | Wall time per message | CPU per message (this process) | Allocs per message | Bytes allocated per message |\n")
	fmt.Fprintf(w, "| --- | ---: | ---: | ---: | ---: |\n")
	for _, r := range results {
		if r.err != nil {
			continue
		}
		fmt.Fprintf(w, "| %s | %.2f µs | %.2f µs | %.1f | %.0f |\n", r.name, r.costNs/1e3, r.costCPU/1e3, r.costAllocs, r.costByte)
	}
	fmt.Fprintf(w, "\nReading the figures: at saturation the latency is the publisher's window waiting its turn "+
		"(%d messages x %d sockets queued behind the deliveries per second above), so it measures the queue, "+
		"not the broker; the paced run, below capacity, is the latency to expect. "+
		"CPU per delivery is this process's CPU time (hubs, middleware, clients, and the embedded NATS servers) "+
		"over the deliveries of the saturation phase. "+
		"The broker's own cost per message is small next to the sockets': one message fans out to %d socket writes.\n\n",
		cfg.window, cfg.clients, cfg.clients)
	if r := results[0]; r.err == nil {
		fanout := r.cpuPerDelivery * time.Duration(cfg.clients) / time.Duration(runtime.GOMAXPROCS(0))
		fmt.Fprintf(w, "Most of the paced latency is that fan-out: on %s, one message to %d sockets takes %d x %.1f µs of CPU "+
			"(server and clients, as both run here), %s on %d cores, before the last socket has it.\n\n",
			r.name, cfg.clients, cfg.clients, float64(r.cpuPerDelivery)/1e3, ms(fanout), runtime.GOMAXPROCS(0))
	}
	return nil
}

func ms(d time.Duration) string { return fmt.Sprintf("%.2f ms", float64(d)/1e6) }

func yes(b bool) string {
	if b {
		return "yes"
	}
	return "**no**"
}

func measure(cfg config, newBus func() (*bus, error)) (r result) {
	bs, err := newBus()
	if err != nil {
		r.err = err
		return r
	}
	defer bs.stop()
	fmt.Fprintf(os.Stderr, "bench: %s\n", bs.name)

	nodes := make([]*node, len(bs.brokers))
	for i, b := range bs.brokers {
		nodes[i] = startNode(b)
	}
	defer func() {
		for _, n := range nodes {
			n.stop()
		}
	}()
	clients, err := dialAll(nodes, cfg.clients)
	if err != nil {
		r.err = err
		return r
	}
	rv := &recv{poke: make(chan struct{}, 1)}
	var wg sync.WaitGroup
	for _, cl := range clients {
		wg.Add(1)
		go cl.read(rv, &wg) // owned by measure: ends when the connection closes; waited for below
	}
	defer func() {
		for _, cl := range clients {
			_ = cl.c.CloseNow()
		}
		wg.Wait()
	}()
	// Wait for the hubs' members, then for the interest to reach every
	// server: probes (too short to count) until every socket has one.
	want := 0
	for i, n := range nodes {
		want = cfg.clients / len(nodes)
		if i < cfg.clients%len(nodes) {
			want++
		}
		if err := waitUntil(func() bool { return n.hub.Len(topic) == want }); err != nil {
			r.err = err
			return r
		}
	}
	pub := nodes[0].hub
	if err := settle(pub, clients, rv); err != nil {
		r.err = err
		return r
	}
	base := rv.total.Load()

	payload := func(seq int) []byte {
		p := make([]byte, cfg.size)
		binary.BigEndian.PutUint64(p, uint64(seq))
		binary.BigEndian.PutUint64(p[8:], uint64(time.Now().UnixNano()))
		return p
	}
	n := int64(len(clients))
	ctx := context.Background()
	c0 := cpuTime()
	t0 := time.Now()
	for i := range cfg.burst {
		if err := waitTotal(rv, base+int64(i-cfg.window)*n); err != nil {
			r.err = err
			return r
		}
		if err := pub.Publish(ctx, topic, websocket.MessageBinary, payload(i)); err != nil {
			r.err = err
			return r
		}
	}
	if err := waitTotal(rv, base+int64(cfg.burst)*n); err != nil {
		r.err = err
		return r
	}
	r.deliveries = float64(int64(cfg.burst)*n) / time.Since(t0).Seconds()
	r.cpuPerDelivery = (cpuTime() - c0) / time.Duration(int64(cfg.burst)*n)

	tick := time.NewTicker(time.Second / time.Duration(cfg.rate))
	pacedN := int(cfg.paced * time.Duration(cfg.rate) / time.Second)
	for i := range pacedN {
		<-tick.C
		if err := pub.Publish(ctx, topic, websocket.MessageBinary, payload(cfg.burst+i)); err != nil {
			tick.Stop()
			r.err = err
			return r
		}
	}
	tick.Stop()
	if err := waitTotal(rv, base+int64(cfg.burst+pacedN)*n); err != nil {
		r.err = err
		return r
	}
	for _, nd := range nodes {
		r.slow += nd.hub.Stats().Slow
	}
	// Stop the readers before reading what they recorded.
	for _, cl := range clients {
		_ = cl.c.CloseNow()
	}
	wg.Wait()
	var sat, paced []int64
	r.ordered = true
	for _, cl := range clients {
		if !cl.ordered || len(cl.lat) != cfg.burst+pacedN {
			r.ordered = false
			continue
		}
		sat = append(sat, cl.lat[:cfg.burst]...)
		paced = append(paced, cl.lat[cfg.burst:]...)
	}
	r.p50, r.p99, r.max = quantiles(sat)
	r.pacedP50, r.pacedP99, r.pacedMax = quantiles(paced)
	r.costNs, r.costCPU, r.costAllocs, r.costByte, r.err = brokerCost(bs, cfg.cost)
	return r
}

func quantiles(v []int64) (p50, p99, max time.Duration) {
	if len(v) == 0 {
		return 0, 0, 0
	}
	slices.Sort(v)
	q := func(f float64) time.Duration { return time.Duration(v[int(f*float64(len(v)-1))]) }
	return q(0.50), q(0.99), time.Duration(v[len(v)-1])
}

// settle publishes probes until every client has one (interest reaches a
// cluster's other servers asynchronously).
func settle(pub *broadcast.Hub, clients []*client, rv *recv) error {
	_ = rv
	deadline := time.Now().Add(30 * time.Second)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	// A probe is 8 bytes: clients skip it but count it in probes.
	for {
		if err := pub.Publish(context.Background(), topic, websocket.MessageBinary, make([]byte, 8)); err != nil {
			return err
		}
		<-tick.C
		all := true
		for _, cl := range clients {
			if cl.probes.Load() == 0 {
				all = false
				break
			}
		}
		if all {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("probes never reached every socket")
		}
	}
}

func waitTotal(rv *recv, target int64) error {
	deadline := time.NewTimer(60 * time.Second)
	defer deadline.Stop()
	for rv.total.Load() < target {
		select {
		case <-rv.poke:
		case <-deadline.C:
			return fmt.Errorf("deliveries stalled at %d of %d", rv.total.Load(), target)
		}
	}
	return nil
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

// brokerCost publishes n envelope-sized messages on the first broker to a
// subscription on the second.
func brokerCost(bs *bus, n int) (ns, cpu, allocs, bytesPer float64, err error) {
	// Warm-up messages (first byte 0) cross the cluster until one
	// arrives; only measured ones (first byte 1) are counted.
	var warm, got atomic.Int64
	done := make(chan struct{})
	sub, err := bs.brokers[1].Subscribe(context.Background(), "cost", func(p []byte) {
		if len(p) > 0 && p[0] == 0 {
			warm.Add(1)
			return
		}
		if got.Add(1) == int64(n) {
			close(done)
		}
	})
	if err != nil {
		return 0, 0, 0, 0, err
	}
	defer sub.Unsubscribe()
	p := make([]byte, 2+128)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	deadline := time.Now().Add(30 * time.Second)
	for warm.Load() == 0 {
		if err := bs.brokers[0].Publish(context.Background(), "cost", p); err != nil {
			return 0, 0, 0, 0, err
		}
		if time.Now().After(deadline) {
			return 0, 0, 0, 0, fmt.Errorf("cost subscription never received")
		}
		<-tick.C
	}
	p[0] = 1
	var m0, m1 runtime.MemStats
	runtime.ReadMemStats(&m0)
	c0 := cpuTime()
	t0 := time.Now()
	for range n {
		if err := bs.brokers[0].Publish(context.Background(), "cost", p); err != nil {
			return 0, 0, 0, 0, err
		}
	}
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		return 0, 0, 0, 0, fmt.Errorf("broker cost: %d of %d delivered", got.Load(), n)
	}
	el := time.Since(t0)
	c1 := cpuTime()
	runtime.ReadMemStats(&m1)
	return float64(el) / float64(n), float64(c1-c0) / float64(n),
		float64(m1.Mallocs-m0.Mallocs) / float64(n), float64(m1.TotalAlloc-m0.TotalAlloc) / float64(n), nil
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
