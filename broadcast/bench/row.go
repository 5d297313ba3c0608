package main

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/chiws/chiws"
	"github.com/chiws/chiws/broadcast"
	"github.com/coder/websocket"
)

// rowSpec is one fleet: a broker, its members spread over topics, and the
// rate at which each member gets messages.
type rowSpec struct {
	part    string // "fleet", "topics" or "cluster"
	bus     namedBus
	members int
	topics  int
	rate    float64 // messages per second per member
	goal    bool    // the latency goals' load
	churn   bool    // a third phase: the hub again, with joins and leaves
}

func (s rowSpec) id() string {
	return fmt.Sprintf("%s-%s-%dm-%dt-%gps", s.part, s.bus.key, s.members, s.topics, s.rate)
}

// Phases, carried in every measured message.
const (
	phaseLoop  = 1
	phaseHub   = 2
	phaseChurn = 3
)

// phaseResult is one phase of a row.
type phaseResult struct {
	target    int // messages the pacing asked for
	published int
	rep       phaseReport
	serverCPU time.Duration // this process
	clientCPU time.Duration // the client process
	wall      time.Duration // from the first publish to the last delivery
	brokerCPU time.Duration // redis-server processes
	otherCPU  time.Duration // every other process on the machine (/proc/stat)
	writeErrs int
	profile   string // CPU profile file of the phase
	churn     churnReport
	err       error
}

func (p phaseResult) ok() bool { return p.err == nil && p.published > 0 }

func (p phaseResult) perDelivery(d time.Duration) time.Duration {
	if p.rep.Received == 0 {
		return 0
	}
	return d / time.Duration(p.rep.Received)
}

// lossless: every stable member got every message, in order.
func (p phaseResult) lossless() bool {
	return p.rep.Received == p.rep.Expected && p.rep.Short == 0 && p.rep.Gaps == 0 && p.writeErrs == 0
}

type rowResult struct {
	spec                 rowSpec
	loop, hub, withChurn phaseResult
	slow, dropped        uint64 // the hubs' Stats at the end of the row
	err                  error
}

// waitQuiet waits, up to limit, until the machine's other processes use
// less than a quarter of a core over half a second, so that a row starts
// on a quiet machine when it can (the phases report what others used).
func waitQuiet(cl *clients, limit time.Duration) {
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		m0, c0 := machineCPU(), cpuTime()
		cc0, _ := cl.cpu()
		time.Sleep(500 * time.Millisecond)
		cc1, _ := cl.cpu()
		others := machineCPU() - m0 - (cpuTime() - c0) - (cc1 - cc0)
		if others < 125*time.Millisecond {
			return
		}
	}
	fmt.Fprintf(os.Stderr, "bench: other processes still busy after %s; going on\n", limit)
}

// machineCPU is the busy time of every CPU of the machine (/proc/stat, in
// ticks of 10 ms).
func machineCPU() time.Duration {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line) // cpu user nice system idle iowait irq softirq steal ...
	var busy int64
	for i, v := range f {
		if i == 0 || i == 4 || i == 5 || i > 8 {
			continue
		}
		n, _ := strconv.ParseInt(v, 10, 64)
		busy += n
	}
	return time.Duration(busy) * 10 * time.Millisecond
}

func topicName(k int) string { return "t." + strconv.Itoa(k) }

// measureRow runs the plain loop, then the hub, on the same sockets.
func measureRow(cfg config, spec rowSpec, cl *clients) (r rowResult) {
	r.spec = spec
	fmt.Fprintf(os.Stderr, "bench: %s\n", spec.id())
	waitQuiet(cl, cfg.quiet)
	bs, err := spec.bus.new()
	if err != nil {
		r.err = err
		return r
	}
	defer bs.stop()
	nodes := make([]*node, len(bs.brokers))
	var urls []string
	for i, b := range bs.brokers {
		nodes[i] = startNode(b)
		urls = append(urls, nodes[i].url())
	}
	defer func() {
		for _, n := range nodes {
			n.stop()
		}
	}()
	if _, err := cl.do("dial %d %d %s", spec.members, spec.topics, strings.Join(urls, ",")); err != nil {
		r.err = err
		return r
	}
	defer func() { _, _ = cl.do("close") }() // before the nodes stop
	if err := waitUntil(func() bool {
		n := 0
		for _, nd := range nodes {
			n += nd.count()
		}
		return n == spec.members
	}); err != nil {
		r.err = fmt.Errorf("sockets never all accepted: %w", err)
		return r
	}
	// Socket i is on node i%3 (the client dials urls[i%3]) and topic i%topics.
	conns := make([]*chiws.Conn, spec.members)
	byTopic := make([][]*chiws.Conn, spec.topics)
	for i := range spec.members {
		nd := nodes[i%len(nodes)]
		nd.mu.Lock()
		conns[i] = nd.conns[i]
		nd.mu.Unlock()
		if conns[i] == nil {
			r.err = fmt.Errorf("socket %d not on node %d", i, i%len(nodes))
			return r
		}
		byTopic[i%spec.topics] = append(byTopic[i%spec.topics], conns[i])
	}
	names := make([]string, spec.topics)
	sizes := make([]int, spec.topics)
	for k := range names {
		names[k] = topicName(k)
		sizes[k] = len(byTopic[k])
	}
	ctx := context.Background()

	// 1. The plain loop: for each message, every socket of its topic in turn.
	r.loop = phase(cfg, spec, cl, urls, bs.pids, phaseLoop, sizes, func(k int, p []byte) int {
		errs := 0
		for _, c := range byTopic[k] {
			if err := c.Write(ctx, websocket.MessageBinary, p); err != nil {
				errs++
			}
		}
		return errs
	})
	if r.loop.err != nil {
		r.err = fmt.Errorf("loop: %w", r.loop.err)
		return r
	}

	// 2. The same sockets join the hub of their node.
	if err := joinAll(nodes, conns, spec.topics); err != nil {
		r.err = err
		return r
	}
	if err := settle(nodes[0].hub, names, cl, spec.members); err != nil {
		r.err = err
		return r
	}
	pub := nodes[0].hub
	publish := func(k int, p []byte) int {
		if err := pub.Publish(ctx, names[k], websocket.MessageBinary, p); err != nil {
			return 1
		}
		return 0
	}
	r.hub = phase(cfg, spec, cl, urls, bs.pids, phaseHub, sizes, publish)
	if r.hub.err != nil {
		r.err = fmt.Errorf("hub: %w", r.hub.err)
		return r
	}

	// 3. The hub again, while sockets join and leave.
	if spec.churn {
		r.withChurn = phase(cfg, spec, cl, urls, bs.pids, phaseChurn, sizes, publish)
		if r.withChurn.err != nil {
			r.err = fmt.Errorf("churn: %w", r.withChurn.err)
			return r
		}
	}
	for _, nd := range nodes {
		st := nd.hub.Stats()
		r.slow += st.Slow
		r.dropped += st.Dropped
	}
	return r
}

// joinAll joins socket i to the hub of node i%len(nodes), on topic
// i%topics, sixteen at a time.
func joinAll(nodes []*node, conns []*chiws.Conn, topics int) error {
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for range 16 {
		wg.Add(1)
		go func() { // owned by joinAll: waited for below
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= len(conns) {
					return
				}
				if _, err := nodes[i%len(nodes)].hub.Join(conns[i], topicName(i%topics)); err != nil {
					errs <- fmt.Errorf("join %d: %w", i, err)
					next.Store(int64(len(conns)))
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	return <-errs
}

// settle publishes short probes to every topic until every stable socket
// has one (interest reaches a cluster's other servers asynchronously),
// then waits until the probes stop arriving: a round of probes is a whole
// fan-out, and rounds still queued would delay the first messages.
func settle(pub *broadcast.Hub, names []string, cl *clients, members int) error {
	if _, err := cl.do("reset 0"); err != nil {
		return err
	}
	deadline := time.Now().Add(60 * time.Second)
	probe := make([]byte, 8)
	for {
		for _, t := range names {
			if err := pub.Publish(context.Background(), t, websocket.MessageBinary, probe); err != nil {
				return fmt.Errorf("probe: %w", err)
			}
		}
		time.Sleep(200 * time.Millisecond)
		n, err := cl.int("probed")
		if err != nil {
			return err
		}
		if n == int64(members) {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("probes reached %d of %d sockets", n, members)
		}
	}
	last := int64(-1)
	for {
		n, err := cl.int("probes")
		if err != nil {
			return err
		}
		if n == last {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("probes still arriving")
		}
		last = n
		time.Sleep(300 * time.Millisecond)
	}
}

// phase publishes at the row's rate for cfg.dur, message i to topic
// i%topics, waits until every message has reached every socket of its
// topic (or stalls), and takes the CPU time of both processes over that
// window, and the CPU profile of this one.
func phase(cfg config, spec rowSpec, cl *clients, urls []string, pids []int, ph byte, sizes []int, publish func(k int, p []byte) (errs int)) (r phaseResult) {
	if _, err := cl.do("reset %d", ph); err != nil {
		r.err = err
		return r
	}
	if ph == phaseChurn {
		if _, err := cl.do("churn %d %d %d %s", cfg.dur.Milliseconds(), cfg.churnWorkers, cfg.churnHold.Milliseconds(),
			strings.Join(urls, ",")); err != nil {
			r.err = err
			return r
		}
	}
	names := map[byte]string{phaseLoop: "loop", phaseHub: "hub", phaseChurn: "churn"}
	r.profile = filepath.Join(cfg.profileDir, spec.id()+"-"+names[ph]+".pprof")
	f, err := os.Create(r.profile)
	if err != nil {
		r.err = err
		return r
	}
	defer f.Close()
	if err := pprof.StartCPUProfile(f); err != nil {
		r.err = err
		return r
	}
	profiling := true
	defer func() {
		if profiling {
			pprof.StopCPUProfile()
		}
	}()
	cc0, err := cl.cpu()
	if err != nil {
		r.err = err
		return r
	}
	c0 := cpuTime()
	m0, p0 := machineCPU(), procCPU(pids)
	t0 := time.Now()

	rate := spec.rate * float64(spec.topics) // messages per second, all topics
	r.target = int(rate * cfg.dur.Seconds())
	deadline := t0.Add(cfg.dur)
	T := len(sizes)
	for i := 0; i < r.target; i++ {
		due := t0.Add(time.Duration(float64(i) / rate * float64(time.Second)))
		if d := time.Until(due); d > 200*time.Microsecond {
			time.Sleep(d)
		} else if time.Now().After(deadline) {
			break // behind: the publisher cannot keep this rate
		}
		p := make([]byte, cfg.size)
		p[offPhase] = ph
		binary.BigEndian.PutUint32(p[offTopic:], uint32(i%T))
		binary.BigEndian.PutUint64(p[offSeq:], uint64(i/T))
		// The time it was due, not the time it went: a publisher that
		// fell behind (the loop, still writing the previous message)
		// counts its own delay.
		binary.BigEndian.PutUint64(p[offTime:], uint64(due.UnixNano()))
		r.writeErrs += publish(i%T, p)
		r.published++
	}
	var expected int64
	for k, n := range sizes {
		per := r.published / T
		if k < r.published%T {
			per++
		}
		expected += int64(per * n)
	}
	// Wait for the deliveries: until all arrived, or none for 10 s.
	last, lastAt := int64(-1), time.Now()
	for {
		n, err := cl.int("count")
		if err != nil {
			r.err = err
			return r
		}
		if n >= expected {
			break
		}
		if n != last {
			last, lastAt = n, time.Now()
		} else if time.Since(lastAt) > 10*time.Second {
			break // reported as short
		}
		time.Sleep(5 * time.Millisecond)
	}
	r.wall = time.Since(t0)
	r.serverCPU = cpuTime() - c0
	cc1, err := cl.cpu()
	if err != nil {
		r.err = err
		return r
	}
	r.clientCPU = cc1 - cc0
	r.brokerCPU = procCPU(pids) - p0
	r.otherCPU = max(machineCPU()-m0-r.serverCPU-r.clientCPU-r.brokerCPU, 0)
	pprof.StopCPUProfile()
	profiling = false
	if ph == phaseChurn {
		s, err := cl.do("churnwait")
		if err != nil {
			r.err = err
			return r
		}
		if err := json.Unmarshal([]byte(s), &r.churn); err != nil {
			r.err = err
			return r
		}
	}
	r.rep, r.err = cl.report(r.published)
	fmt.Fprintf(os.Stderr, "bench:   %s: published %d/%d, wall %s, cpu %s + clients %s, delivered %d/%d, p50 %s p99 %s\n",
		names[ph], r.published, r.target, r.wall.Round(time.Millisecond), r.serverCPU.Round(time.Millisecond),
		r.clientCPU.Round(time.Millisecond), r.rep.Received, r.rep.Expected, ms(time.Duration(r.rep.P50)), ms(time.Duration(r.rep.P99)))
	return r
}
