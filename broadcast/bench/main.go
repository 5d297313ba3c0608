// Command bench measures broadcast.Hub against a plain loop over the same
// sockets, on each broker, at fleet sizes (1,000 and 10,000 sockets), at
// topic counts (1, 100, 10,000), with joins and leaves during publishing,
// on a Redis Cluster, and the brokers' own cost per message under
// comparable publish semantics. The sockets are chiws Conns behind the
// middleware, on three hubs in this process; their clients run in a
// second process (this binary again), so that 10,000 sockets fit the
// per-process file limit on both sides. It writes a Markdown section
// into -out, between markers, leaving the rest of the file as it is:
//
//	go run ./broadcast/bench -out docs/benchmarks.md
//	go run ./broadcast/bench -only fleet -brokers memory -cpuprofile /tmp/prof
package main

import (
	"bytes"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"
)

// config is one run's size and selection.
type config struct {
	large, small         int     // members of the two fleet sizes
	largeRate, smallRate float64 // messages per second per member: the latency goals
	lightRate            float64 // the large fleet's rate below capacity (the small's is 10x), and the topics part's
	topics               []int   // topic counts of the topics part (1 is the fleet part)
	clusterTopics        int
	dur                  time.Duration // each phase's publishing time
	size                 int           // payload bytes
	cost                 int           // messages per broker-cost row
	churnWorkers         int
	churnHold            time.Duration
	brokers              []namedBus // memory, nats, redis (cluster is a part)
	parts                map[string]bool
	profileDir           string
	quiet                time.Duration // how long a row waits for other processes to quiet down
	command              string        // the command line that reproduces the section
}

var allParts = []string{"fleet", "churn", "topics", "cluster", "cost"}

func defaultConfig() config {
	return config{
		large: 10000, small: 1000, largeRate: 10, smallRate: 100, lightRate: 2,
		topics: []int{100, 10000}, clusterTopics: 10000,
		dur: 5 * time.Second, size: 128, cost: 20000,
		churnWorkers: 8, churnHold: 50 * time.Millisecond, quiet: 30 * time.Second,
		brokers: []namedBus{memoryNamed, natsNamed, redisNamed},
		parts:   map[string]bool{"fleet": true, "churn": true, "topics": true, "cluster": true, "cost": true},
		command: "go run ./broadcast/bench -out docs/benchmarks.md",
	}
}

func main() {
	if isClientProcess() {
		clientMain()
		return
	}
	cfg := defaultConfig()
	out := flag.String("out", "", "Markdown file to write the section into (default: stdout)")
	only := flag.String("only", "", "comma-separated parts to run: "+strings.Join(allParts, ",")+" (default: all)")
	brokers := flag.String("brokers", "", "comma-separated brokers of the fleet, churn, topics and cost parts: memory,nats,redis (default: all)")
	topics := flag.String("topics", "100,10000", "topic counts of the topics part")
	profDir := flag.String("cpuprofile", "", "keep the CPU profile of every phase in this directory (DIR/<row>-<phase>.pprof); they are always taken")
	flag.IntVar(&cfg.large, "large", cfg.large, "members of the large fleet")
	flag.IntVar(&cfg.small, "small", cfg.small, "members of the small fleet")
	flag.Float64Var(&cfg.largeRate, "large-rate", cfg.largeRate, "messages per second per member, large fleet and topics part")
	flag.Float64Var(&cfg.smallRate, "small-rate", cfg.smallRate, "messages per second per member, small fleet")
	flag.Float64Var(&cfg.lightRate, "light-rate", cfg.lightRate, "messages per second per member of the large fleet below capacity (the small fleet gets 10x) and of the topics part")
	flag.IntVar(&cfg.clusterTopics, "cluster-topics", cfg.clusterTopics, "topics of the cluster part's second row")
	flag.DurationVar(&cfg.dur, "dur", cfg.dur, "publishing time of each phase")
	flag.IntVar(&cfg.cost, "cost", cfg.cost, "messages per broker-cost row")
	flag.DurationVar(&cfg.quiet, "quiet", cfg.quiet, "how long each row waits for the machine's other processes to quiet down before it starts")
	flag.Parse()
	// The command that reproduces the section: the flags that were set,
	// but where the profiles go.
	var args []string
	flag.Visit(func(f *flag.Flag) {
		if f.Name != "cpuprofile" {
			args = append(args, "-"+f.Name+" "+f.Value.String())
		}
	})
	cfg.command = strings.TrimSpace("go run ./broadcast/bench " + strings.Join(args, " "))
	if *only != "" {
		cfg.parts = map[string]bool{}
		for _, p := range strings.Split(*only, ",") {
			cfg.parts[strings.TrimSpace(p)] = true
		}
	}
	if *brokers != "" {
		var sel []namedBus
		for _, k := range strings.Split(*brokers, ",") {
			for _, b := range defaultConfig().brokers {
				if b.key == strings.TrimSpace(k) {
					sel = append(sel, b)
				}
			}
		}
		cfg.brokers = sel
	}
	cfg.topics = nil
	for _, s := range strings.Split(*topics, ",") {
		if n, err := strconv.Atoi(strings.TrimSpace(s)); err == nil && n > 0 {
			cfg.topics = append(cfg.topics, n)
		}
	}
	cfg.profileDir = *profDir
	if err := os.MkdirAll(cfg.profileDir, 0o755); cfg.profileDir != "" && err != nil {
		fail(err)
	}
	if cfg.profileDir == "" {
		dir, err := os.MkdirTemp("", "broadcast-bench-prof")
		if err != nil {
			fail(err)
		}
		defer os.RemoveAll(dir)
		cfg.profileDir = dir
	}
	var buf bytes.Buffer
	if err := run(&buf, cfg); err != nil {
		fail(err)
	}
	if *out == "" {
		_, _ = os.Stdout.Write(buf.Bytes())
		return
	}
	if err := splice(*out, buf.String()); err != nil {
		fail(err)
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "bench:", err)
	os.Exit(1)
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

// rows returns the fleets of the selected parts, in running order.
func (cfg config) rows() []rowSpec {
	var rows []rowSpec
	if cfg.parts["fleet"] || cfg.parts["churn"] {
		for _, b := range cfg.brokers {
			rows = append(rows,
				rowSpec{part: "fleet", bus: b, members: cfg.large, topics: 1, rate: cfg.largeRate, goal: true, churn: cfg.parts["churn"]},
				rowSpec{part: "fleet", bus: b, members: cfg.small, topics: 1, rate: cfg.smallRate, goal: true, churn: cfg.parts["churn"]})
			if cfg.parts["fleet"] {
				rows = append(rows,
					rowSpec{part: "fleet", bus: b, members: cfg.large, topics: 1, rate: cfg.lightRate, churn: cfg.parts["churn"]},
					rowSpec{part: "fleet", bus: b, members: cfg.small, topics: 1, rate: cfg.lightRate * 10, churn: cfg.parts["churn"]})
			}
		}
	}
	if cfg.parts["topics"] {
		for _, b := range cfg.brokers {
			for _, t := range cfg.topics {
				rows = append(rows, rowSpec{part: "topics", bus: b, members: cfg.large, topics: t, rate: cfg.lightRate})
			}
		}
	}
	if cfg.parts["cluster"] {
		rows = append(rows,
			rowSpec{part: "cluster", bus: clusterNamed, members: cfg.large, topics: 1, rate: cfg.largeRate, goal: true},
			rowSpec{part: "cluster", bus: clusterNamed, members: cfg.large, topics: cfg.clusterTopics, rate: cfg.lightRate})
	}
	return rows
}

func run(w io.Writer, cfg config) error {
	start := time.Now()
	var results []rowResult
	if specs := cfg.rows(); len(specs) > 0 {
		cl, err := startClients()
		if err != nil {
			return err
		}
		defer cl.stop()
		for _, s := range specs {
			results = append(results, measureRow(cfg, s, cl))
		}
	}
	var costs []costRow
	if cfg.parts["cost"] {
		buses := append([]namedBus(nil), cfg.brokers...)
		if cfg.parts["cluster"] {
			buses = append(buses, clusterNamed)
		}
		for _, b := range buses {
			costs = append(costs, measureCost(cfg.cost, b, cfg.profileDir)...)
		}
	}
	report(w, cfg, start, results, costs)
	return nil
}

// Goals.
const (
	goalRatio = 1.2
	goalP99   = 50 * time.Millisecond
)

// writeGoals writes the Goals table and returns the goals missed.
func writeGoals(w io.Writer, cfg config, results []rowResult) []missedGoal {
	type goal struct {
		text, measured string
		ok             bool
		info           bool
	}
	var goals []goal
	var missed []missedGoal
	add := func(g goal, m *missedGoal) {
		goals = append(goals, g)
		if !g.ok && !g.info && m != nil {
			missed = append(missed, *m)
		}
	}
	for _, r := range results {
		if r.err != nil {
			add(goal{text: r.spec.label(), measured: "not run: " + r.err.Error()}, nil)
		}
	}
	// 1. CPU: Memory below capacity is the goal; the rest is information.
	for i, r := range results {
		s := r.spec
		if r.err != nil || s.bus.key != "memory" || s.goal {
			continue
		}
		ok := r.ratio() <= goalRatio
		add(goal{text: fmt.Sprintf("Hub CPU per delivery at most %.1fx the loop's (%s)", goalRatio, s.label()),
			measured: r.ratioText(), ok: ok},
			&missedGoal{row: i, phase: &results[i].hub, name: "hub", what: "CPU ratio, " + s.label()})
	}
	var byBroker = map[string][]string{}
	var brokers []string
	for _, r := range results {
		if r.err != nil || (r.spec.bus.key == "memory" && !r.spec.goal) {
			continue
		}
		k := r.spec.bus.name
		if _, ok := byBroker[k]; !ok {
			brokers = append(brokers, k)
		}
		load := "below capacity"
		if r.spec.goal {
			load = "goal load, saturated"
		}
		byBroker[k] = append(byBroker[k], fmt.Sprintf("%.2fx at %d members, %s, %g msg/s (%s)",
			r.ratio(), r.spec.members, topicsText(r.spec.topics), r.spec.rate, load))
	}
	for _, k := range brokers {
		add(goal{text: "Hub CPU per delivery against the loop's, " + k, measured: strings.Join(byBroker[k], "; "), info: true}, nil)
	}
	// 4. Latency at the goal loads.
	for i, r := range results {
		s := r.spec
		if r.err != nil || !s.goal || s.part != "fleet" {
			continue
		}
		ok := r.hub.latencyOK() && r.slow == 0
		add(goal{text: fmt.Sprintf("Delivery p99 at most %s, no healthy member dropped (%s)", ms(goalP99), s.label()),
			measured: fmt.Sprintf("%s; the loop on the same sockets: p99 %s, %s", r.hub.latencyText(r.slow),
				ms(time.Duration(r.loop.rep.P99)), r.loop.capacityText(s)), ok: ok},
			&missedGoal{row: i, phase: &results[i].hub, name: "hub", what: "latency, " + s.label()})
	}
	// 3. Joins and leaves: no stable member dropped, per broker.
	churnOK, churnText := map[string]bool{}, map[string][]string{}
	var churnBrokers []string
	for _, r := range results {
		if r.err != nil || !r.spec.churn {
			continue
		}
		k := r.spec.bus.name
		if _, ok := churnOK[k]; !ok {
			churnBrokers = append(churnBrokers, k)
			churnOK[k] = true
		}
		c := r.withChurn
		churnOK[k] = churnOK[k] && c.ok() && c.lossless() && r.slow == 0
		churnText[k] = append(churnText[k], fmt.Sprintf("%d members at %g msg/s: %d / %d delivered, %d gaps, %d slow, p99 %s, %.0f joins+leaves/s",
			r.spec.members, r.spec.rate, c.rep.Received, c.rep.Expected, c.rep.Gaps, r.slow,
			ms(time.Duration(c.rep.P99)), float64(c.churn.Cycles)/cfg.dur.Seconds()))
	}
	for _, k := range churnBrokers {
		add(goal{text: "Joins and leaves during publishing: no stable member dropped (Stats().Slow 0, no gap, every message), " + k,
			measured: strings.Join(churnText[k], "; "), ok: churnOK[k]}, nil)
	}
	// 6. The cluster.
	for _, r := range results {
		if r.err != nil || r.spec.part != "cluster" {
			continue
		}
		add(goal{text: "Redis Cluster: " + r.spec.label(), measured: r.hub.latencyText(r.slow) + "; CPU " + r.ratioText(), info: true}, nil)
	}
	nGoals, nMet := 0, 0
	for _, g := range goals {
		if !g.info {
			nGoals++
			if g.ok {
				nMet++
			}
		}
	}
	fmt.Fprintf(w, "### Goals\n\n%d of %d goals met in this run. Rows marked info report a figure without a criterion.\n\n", nMet, nGoals)
	fmt.Fprintf(w, "| Goal | Measured | Result |\n| --- | --- | --- |\n")
	for _, g := range goals {
		res := metText(g.ok)
		if g.info {
			res = "info"
		}
		fmt.Fprintf(w, "| %s | %s | %s |\n", g.text, g.measured, res)
	}
	fmt.Fprintln(w)
	// What the latency goals met against: the machine.
	var need []float64
	var light []string
	var perLarge time.Duration // the loop's CPU per delivery, both processes, large fleet below capacity
	for _, r := range results {
		if r.err != nil || r.spec.part != "fleet" {
			continue
		}
		if r.spec.goal {
			per := r.loop.perDelivery(r.loop.serverCPU + r.loop.clientCPU)
			need = append(need, per.Seconds()*r.spec.rate*float64(r.spec.members))
		} else {
			if r.spec.members == cfg.large && perLarge == 0 {
				perLarge = r.loop.perDelivery(r.loop.serverCPU + r.loop.clientCPU)
			}
			light = append(light, fmt.Sprintf("%s at %d members: hub %s, loop %s", r.spec.bus.name, r.spec.members,
				ms(time.Duration(r.hub.rep.P99)), ms(time.Duration(r.loop.rep.P99))))
		}
	}
	if len(need) > 0 {
		lo, hi := need[0], need[0]
		for _, n := range need {
			lo, hi = min(lo, n), max(hi, n)
		}
		fmt.Fprintf(w, "Reading the latency goals: at the goal loads the plain loop on the same sockets needs %.2f to %.2f cores "+
			"(its CPU per delivery, bench and clients, times the deliveries per second) of the machine's %d, so both the loop "+
			"and the hub queue there, and what the rows measure is that queue. ", lo, hi, runtime.NumCPU())
		if len(light) > 0 {
			fmt.Fprintf(w, "Below capacity the p99s are: %s. ", strings.Join(light, "; "))
		}
		if perLarge > 0 {
			fmt.Fprintf(w, "A fan-out to %d sockets takes %d x %s of CPU (the loop's, bench and clients, below capacity), "+
				"%s on %d cores, before its last socket has the message, so a p99 of %s for %d members needs more cores "+
				"(or the clients on another machine), whatever writes the sockets.",
				cfg.large, cfg.large, us(perLarge), ms(time.Duration(cfg.large)*perLarge/time.Duration(runtime.NumCPU())),
				runtime.NumCPU(), ms(goalP99), cfg.large)
		}
		fmt.Fprintf(w, "\n\n")
	}
	return missed
}

func report(w io.Writer, cfg config, start time.Time, results []rowResult, costs []costRow) {
	fmt.Fprintf(w, "## 8. Broadcast: the hub against a plain loop over the same sockets (up to %d sockets, 3 nodes)\n\n", max(cfg.large, cfg.small))
	fmt.Fprintf(w, "```sh\n%s\n```\n\n", cfg.command)
	fmt.Fprintf(w, "Machine: %d CPUs (GOMAXPROCS %d), %s, %s/%s. Run on %s, took %s.\n",
		runtime.NumCPU(), runtime.GOMAXPROCS(0), runtime.Version(), runtime.GOOS, runtime.GOARCH,
		start.UTC().Format("2006-01-02 15:04 UTC"), time.Since(start).Round(time.Second))
	var maxOthers, sumOthers float64
	phases := 0
	for _, r := range results {
		for _, p := range []phaseResult{r.loop, r.hub, r.withChurn} {
			if p.wall > 0 {
				maxOthers = max(maxOthers, p.others())
				sumOthers += p.others()
				phases++
			}
		}
	}
	fmt.Fprintf(w, "The machine is shared and noisy: read the ratios and orders of magnitude, not the ranking of close figures. "+
		"Each row waited up to %s for the machine's other processes to quiet down; during the phases they used %.2f cores on average "+
		"and %.2f at most (/proc/stat, the tables' last column).\n\n", cfg.quiet, sumOthers/float64(max(phases, 1)), maxOthers)
	fmt.Fprintf(w, "Three hubs, each behind an httptest server with the chiws middleware, in the bench's process, "+
		"on one bus (a Memory broker shared by the three hubs; three embedded NATS servers joined by routes; one redis-server; "+
		"a Redis Cluster of three masters); the brokers are the packages' defaults. "+
		"The clients are coder/websocket's, in a second process (the bench's own binary run again), spread over the three nodes, "+
		"dialled from 127.0.0.2 to 127.0.0.9. One publisher, a goroutine of the bench, sends %d-byte binary messages "+
		"carrying a phase, a topic, a sequence number per topic and the time it was due by the pacing; latency is from that time to the "+
		"client's Read, so a publisher that falls behind (the loop still writing the previous message, a Publish waiting for Redis) "+
		"counts its own delay. Each row runs on one set of sockets, one phase after the other:\n\n", cfg.size)
	fmt.Fprintf(w, "1. **Loop**: the sockets are accepted and not joined; for each message the publisher writes it to every socket "+
		"of its topic, `for _, c := range conns { c.Write(ctx, websocket.MessageBinary, p) }` on the `*chiws.Conn`s. No hub, no broker.\n")
	fmt.Fprintf(w, "2. **Hub**: the same sockets join the hub of their node (`Hub.Join(c, topic)`); probes reach every socket first; then "+
		"the publisher calls `Hub.Publish` on node 1 for each message.\n")
	fmt.Fprintf(w, "3. **Churn** (fleet rows): phase 2 again while %d client goroutines each loop: dial a socket that joins a topic "+
		"(alternately one of the stable members' topics, and a topic nobody publishes to), ask the server to `Subscribe` and "+
		"`Unsubscribe` it to the other one, %s apart, and close it. Only the stable members are measured.\n\n",
		cfg.churnWorkers, cfg.churnHold/2)
	fmt.Fprintf(w, "Each phase publishes for %s at the row's rate per member. With several topics the members are spread over them "+
		"(socket i on topic i mod topics) and the publisher publishes to each topic in turn, so each member gets the same "+
		"rate whatever the number of topics, and the publisher makes rate x topics calls per second; "+
		"when it cannot keep up, the row says how many of the messages asked for it published in the time. "+
		"A phase ends when every message has reached every socket of its topic (or after 10 s without a delivery).\n\n", cfg.dur)
	fmt.Fprintf(w, "Two kinds of fleet rows: the **goal loads** (%d members at %g msg/s, %d at %g msg/s: %.0f deliveries per second each), "+
		"and the same fleets **below capacity** (%g and %g msg/s). One delivery costs about 20 µs of CPU on this machine, "+
		"bench and clients together, nearly all of it in the kernel's loopback TCP (see the profiles), so the goal loads need "+
		"about 2 cores, all this machine has: there both the loop and the hub fall behind, the loop (one goroutine) the most. "+
		"The CPU goal is judged below capacity, where neither falls behind: a saturated phase batches reads and writes and "+
		"changes the cost of a delivery, and a loop that falls behind publishes fewer messages.\n\n",
		cfg.large, cfg.largeRate, cfg.small, cfg.smallRate, float64(cfg.large)*cfg.largeRate, cfg.lightRate, cfg.lightRate*10)
	fmt.Fprintf(w, "**CPU per delivery** is the bench process's user+system time (getrusage) from the first publish to the last "+
		"delivery, over the deliveries counted by the clients: the servers' sockets, the middleware, the hubs, the brokers' "+
		"clients, and the embedded NATS servers; not the clients, which are another process (their CPU per delivery is given "+
		"apart, and should match between the phases), nor redis-server. The comparison is fair in that both phases use the "+
		"same sockets, the same clients in the same process, the same payloads at the same rate, and the same measurement; "+
		"the hub phase has what the hub adds: a broker, an envelope, and a writer goroutine per member that the loop does not have. "+
		"The loop is serial, so its latency is the time to write a whole fan-out on one goroutine; the hub writes on a "+
		"goroutine per member. A CPU profile of this process is taken over every phase (both, so the profiler's cost is the same); "+
		"the goals missed show its top entries below.\n\n")

	missed := writeGoals(w, cfg, results)

	for _, part := range []struct{ key, title, text string }{
		{"fleet", "Fleet sizes, one topic", "The latency goals: one publisher to the large fleet at its rate, and to the small fleet at its rate."},
		{"topics", "Topic counts", "The large fleet spread over more topics, at the same rate per member (one topic is the fleet table's row)."},
		{"cluster", "Redis Cluster (three masters, sharded pub/sub)", "redisbroker on a `redis.ClusterClient` (`ClusterOptions`): SPUBLISH and SSUBSCRIBE, the topics spread over the broker's partitions (16 pub/sub connections per broker, whatever the number of topics)."},
	} {
		var rows []rowResult
		for _, r := range results {
			if r.spec.part == part.key && r.err == nil {
				rows = append(rows, r)
			}
		}
		if len(rows) == 0 {
			continue
		}
		fmt.Fprintf(w, "### %s\n\n%s\n\n", part.title, part.text)
		fmt.Fprintf(w, "| Broker | Members | Topics | Msg/s per member | Loop CPU/delivery | Hub CPU/delivery | Hub / loop | "+
			"Loop p50 / p99 / max | Hub p50 / p99 / max | Hub delivered / expected | Gaps | Closed as slow | Published / asked (hub) | Clients' CPU/delivery, loop / hub | Cores busy (both processes), loop / hub | Other processes' cores, loop / hub |\n")
		fmt.Fprintf(w, "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n")
		for _, r := range rows {
			l, h := r.loop, r.hub
			fmt.Fprintf(w, "| %s | %d | %d | %g | %s | %s | %.2fx | %s | %s | %d / %d | %d | %d | %d / %d | %s / %s | %.2f / %.2f | %.2f / %.2f |\n",
				r.spec.bus.name, r.spec.members, r.spec.topics, r.spec.rate,
				us(l.perDelivery(l.serverCPU)), us(h.perDelivery(h.serverCPU)), r.ratio(),
				l.quantiles(), h.quantiles(), h.rep.Received, h.rep.Expected, h.rep.Gaps, r.slow, h.published, h.target,
				us(l.perDelivery(l.clientCPU)), us(h.perDelivery(h.clientCPU)), l.cores(), h.cores(), l.others(), h.others())
		}
		fmt.Fprintln(w)
	}

	var churn []rowResult
	for _, r := range results {
		if r.err == nil && r.spec.churn {
			churn = append(churn, r)
		}
	}
	if len(churn) > 0 {
		fmt.Fprintf(w, "### Joins and leaves during publishing\n\n")
		fmt.Fprintf(w, "Phase 3 of the fleet rows. A cycle is one socket dialled, joined (`Hub.Join` in its handler), "+
			"subscribed to a second topic and unsubscribed from it (`Member.Subscribe`, `Member.Unsubscribe`, asked by the "+
			"client), and closed by the client (the member leaves).\n\n")
		fmt.Fprintf(w, "| Broker | Members | Msg/s per member | Cycles/s | Subscribe + unsubscribe/s | Churn errors | Stable p50 / p99 / max | "+
			"Stable delivered / expected | Gaps | Closed as slow (whole row) | Hub CPU/delivery |\n")
		fmt.Fprintf(w, "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n")
		for _, r := range churn {
			c := r.withChurn
			fmt.Fprintf(w, "| %s | %d | %g | %.0f | %.0f | %d | %s | %d / %d | %d | %d | %s |\n",
				r.spec.bus.name, r.spec.members, r.spec.rate, float64(c.churn.Cycles)/cfg.dur.Seconds(),
				float64(c.churn.Subs)/cfg.dur.Seconds(), c.churn.Errors, c.quantiles(), c.rep.Received, c.rep.Expected,
				c.rep.Gaps, r.slow, us(c.perDelivery(c.serverCPU)))
		}
		fmt.Fprintln(w)
	}

	if len(costs) > 0 {
		fmt.Fprintf(w, "### Broker cost per message: NATS and Redis under the same publish semantics\n\n")
		fmt.Fprintf(w, "%d messages of 130 bytes published on node 1's broker to one subscription on node 2's "+
			"(no hub, no socket), one after the other; wall time from the first publish to the last message received, "+
			"CPU time of this process (the embedded NATS servers included) and of the redis-server processes "+
			"(/proc, 10 ms ticks), allocations of this process. Hub.Publish uses the first semantics of each broker: "+
			"on NATS it returns once nats.go has buffered the message, on Redis once Redis has replied, so the two "+
			"are compared on the same semantics twice: acknowledged (NATS Publish plus a Flush round trip, against "+
			"Redis's PUBLISH reply) and unacknowledged (NATS's buffered Publish, against Redis PUBLISH pipelined %d deep). "+
			"The embedded deployment's brokers reach their NATS server in-process, without a socket; the rows over TCP "+
			"on loopback connect to the same servers as a Redis client does to redis-server. The NATS servers run in this "+
			"process, so its CPU includes theirs; redis-server's is given apart and added in the all-processes column.\n\n",
			cfg.cost, pipelineDepth)
		fmt.Fprintf(w, "| Broker | Publish semantics | Wall time per message | CPU per message (this process, embedded NATS servers included) | redis-server CPU per message | CPU per message, all processes | Allocs per message | Bytes allocated per message |\n")
		fmt.Fprintf(w, "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |\n")
		for _, c := range costs {
			if c.err != nil {
				fmt.Fprintf(w, "| %s | not run: %v | | | | | |\n", c.broker, c.err)
				continue
			}
			srv, all := "-", c.cpu
			if c.serverCPU >= 0 {
				srv = fmt.Sprintf("%.2f µs", c.serverCPU/1e3)
				all += c.serverCPU
			}
			fmt.Fprintf(w, "| %s | %s | %.2f µs | %.2f µs | %s | %.2f µs | %.1f | %.0f |\n", c.broker, c.semantics,
				c.wall/1e3, c.cpu/1e3, srv, all/1e3, c.allocs, c.bytes)
		}
		fmt.Fprintln(w)
	}

	if len(costs) > 0 {
		writeCostProfiles(w, costs)
	}
	if len(missed) > 0 {
		writeProfiles(w, results, missed)
	}
}

// writeCostProfiles splits each broker-cost row's CPU per message by
// where its profile's samples are.
func writeCostProfiles(w io.Writer, costs []costRow) {
	var rows []string
	for _, c := range costs {
		if c.err != nil {
			continue
		}
		p, err := readProfile(c.profile)
		if err != nil || p.total < 300 {
			continue // too few samples to split
		}
		v := p.byCategory()
		sem, _, _ := strings.Cut(c.semantics, ":")
		row := fmt.Sprintf("| %s | %s |", c.broker, sem)
		for i := range categories {
			row += fmt.Sprintf(" %.2f µs |", share(v, i, p.total)*c.cpu/1e3)
		}
		rows = append(rows, row)
	}
	if len(rows) == 0 {
		return
	}
	fmt.Fprintf(w, "Where the broker cost's CPU per message goes (this process; flat time of its CPU profile, every sample in one "+
		"category; rows whose profile has under 300 ms of samples are left out):\n\n")
	fmt.Fprintf(w, "| Broker | Publish semantics |")
	for _, c := range categories {
		fmt.Fprintf(w, " %s |", c.name)
	}
	fmt.Fprintf(w, "\n| --- | --- |%s\n%s\n\n", strings.Repeat(" ---: |", len(categories)), strings.Join(rows, "\n"))
}

type missedGoal struct {
	row   int
	phase *phaseResult
	name  string // of the phase
	what  string
}

// writeProfiles gives, for each phase behind a missed goal, the top
// entries of its CPU profile and where its CPU per delivery goes against
// the loop's, by category.
func writeProfiles(w io.Writer, results []rowResult, missed []missedGoal) {
	fmt.Fprintf(w, "### Profiles of the goals missed\n\n")
	fmt.Fprintf(w, "The CPU profile of this process over the phase behind each goal missed (`-cpuprofile DIR` keeps them; "+
		"`go tool pprof -top FILE`): its top entries by flat time, and its CPU per delivery split by where the samples "+
		"are (flat time, every sample in one category) against the loop's on the same sockets.\n\n")
	done := map[*phaseResult][]string{}
	var order []*phaseResult
	for _, m := range missed {
		if _, ok := done[m.phase]; !ok {
			order = append(order, m.phase)
		}
		done[m.phase] = append(done[m.phase], m.what)
	}
	for _, ph := range order {
		var r rowResult
		var name string
		for _, m := range missed {
			if m.phase == ph {
				r, name = results[m.row], m.name
			}
		}
		fmt.Fprintf(w, "**%s, %s phase** (goals: %s)\n\n", r.spec.label(), name, strings.Join(done[ph], "; "))
		hp, err := readProfile(ph.profile)
		if err != nil {
			fmt.Fprintf(w, "Profile not read: %v\n\n", err)
			continue
		}
		lp, err := readProfile(r.loop.profile)
		if err != nil {
			fmt.Fprintf(w, "Profile not read: %v\n\n", err)
			continue
		}
		fmt.Fprintf(w, "| Function | flat | flat%% | cum%% |\n| --- | ---: | ---: | ---: |\n")
		for i, e := range hp.entries {
			if i == 12 {
				break
			}
			fmt.Fprintf(w, "| `%s` | %.0f ms | %.1f%% | %.1f%% |\n", e.name, e.flat, e.flatPct, e.cumPct)
		}
		fmt.Fprintln(w)
		hc, lc := hp.byCategory(), lp.byCategory()
		hPer, lPer := ph.perDelivery(ph.serverCPU), r.loop.perDelivery(r.loop.serverCPU)
		fmt.Fprintf(w, "| Where the CPU per delivery goes | Loop | Hub | Difference |\n| --- | ---: | ---: | ---: |\n")
		type delta struct {
			name string
			d    float64
		}
		var ds []delta
		for i, c := range categories {
			l, h := share(lc, i, lp.total)*float64(lPer), share(hc, i, hp.total)*float64(hPer)
			fmt.Fprintf(w, "| %s | %.2f µs | %.2f µs | %+.2f µs |\n", c.name, l/1e3, h/1e3, (h-l)/1e3)
			ds = append(ds, delta{c.name, (h - l) / 1e3})
		}
		fmt.Fprintf(w, "| total (getrusage) | %s | %s | %+.2f µs |\n\n", us(lPer), us(hPer), float64(hPer-lPer)/1e3)
		fmt.Fprintf(w, "| Function (cum), per delivery | Loop | Hub |\n| --- | ---: | ---: |\n")
		for _, f := range watched {
			l, h := lp.cum(f.name)*float64(lPer), hp.cum(f.name)*float64(hPer)
			fmt.Fprintf(w, "| `%s`: %s | %.2f µs | %.2f µs |\n", f.name, f.what, l/1e3, h/1e3)
		}
		fmt.Fprintln(w)
		// The analysis: the three largest increases.
		for i := range ds {
			for j := i + 1; j < len(ds); j++ {
				if ds[j].d > ds[i].d {
					ds[i], ds[j] = ds[j], ds[i]
				}
			}
		}
		var parts []string
		for _, d := range ds[:3] {
			if d.d > 0 {
				parts = append(parts, fmt.Sprintf("%s (%+.2f µs)", d.name, d.d))
			}
		}
		fmt.Fprintf(w, "Where the time goes: the hub spends %s per delivery against the loop's %s; the increase is mostly %s.\n\n",
			us(hPer), us(lPer), strings.Join(parts, ", "))
	}
}

// watched are functions whose cumulative time the profiles of missed goals
// give per delivery, loop against hub.
var watched = []struct{ name, what string }{
	{"internal/runtime/syscall/linux.Syscall6", "system calls"},
	{"github.com/coder/websocket.(*Conn).Write", "the socket write, framing and system call included"},
	{"github.com/coder/websocket.(*Conn).setupWriteTimeout", "coder/websocket ties each write to its context (context.AfterFunc on a cancellable one)"},
	{"github.com/chiws/chiws/broadcast.(*Hub).publish", "envelope and broker publish (on Memory the handlers run inside it: the queueing and waking below are part of it)"},
	{"github.com/chiws/chiws/broadcast.(*Member).enqueue", "queueing for each member"},
	{"github.com/chiws/chiws/broadcast.(*Member).signal", "waking the member's writer"},
	{"time.(*Timer).Reset", "the member's write timeout, armed"},
	{"time.(*Timer).Stop", "and stopped"},
	{"runtime.selectgo", "select (the writer's wait, coder/websocket's locks)"},
	{"runtime.schedule", "the scheduler finding the next goroutine"},
	{"runtime.gcBgMarkWorker", "garbage collection"},
}

// cum returns the share of the profile's samples under the function.
func (p cpuProfile) cum(name string) float64 {
	total := p.total
	if total == 0 {
		for _, e := range p.entries {
			total += e.flat
		}
	}
	if total == 0 {
		return 0
	}
	for _, e := range p.entries {
		if e.name == name {
			return e.cum / total
		}
	}
	return 0
}

func share(v []float64, i int, total float64) float64 {
	if total == 0 {
		sum := 0.0
		for _, x := range v {
			sum += x
		}
		total = sum
	}
	if total == 0 {
		return 0
	}
	return v[i] / total
}

func (s rowSpec) label() string {
	return fmt.Sprintf("%s, %d members, %s, %g msg/s each", s.bus.name, s.members, topicsText(s.topics), s.rate)
}

func topicsText(n int) string {
	if n == 1 {
		return "1 topic"
	}
	return fmt.Sprintf("%d topics", n)
}

func (r rowResult) ratio() float64 {
	l := r.loop.perDelivery(r.loop.serverCPU)
	if l == 0 {
		return 0
	}
	return float64(r.hub.perDelivery(r.hub.serverCPU)) / float64(l)
}

func (r rowResult) ratioText() string {
	return fmt.Sprintf("%.2fx (hub %s, loop %s per delivery)", r.ratio(),
		us(r.hub.perDelivery(r.hub.serverCPU)), us(r.loop.perDelivery(r.loop.serverCPU)))
}

func (p phaseResult) latencyOK() bool {
	return p.ok() && p.lossless() && time.Duration(p.rep.P99) <= goalP99
}

func (p phaseResult) latencyText(slow uint64) string {
	t := fmt.Sprintf("p50 %s, p99 %s, max %s; delivered %d / %d, gaps %d, closed as slow %d",
		ms(time.Duration(p.rep.P50)), ms(time.Duration(p.rep.P99)), ms(time.Duration(p.rep.Max)),
		p.rep.Received, p.rep.Expected, p.rep.Gaps, slow)
	if p.published < p.target {
		t += fmt.Sprintf("; published %d of %d asked", p.published, p.target)
	}
	return t
}

func (p phaseResult) churnText(d time.Duration) string {
	return fmt.Sprintf("%.0f joins and leaves/s, %.0f subscribe+unsubscribe/s, %d churn errors",
		float64(p.churn.Cycles)/d.Seconds(), float64(p.churn.Subs)/d.Seconds(), p.churn.Errors)
}

// cores is the CPU time of both processes over the phase's wall time.
func (p phaseResult) cores() float64 {
	if p.wall == 0 {
		return 0
	}
	return float64(p.serverCPU+p.clientCPU) / float64(p.wall)
}

// others is the CPU time of the machine's other processes (not the
// bench, its clients or redis-server) over the phase's wall time.
func (p phaseResult) others() float64 {
	if p.wall == 0 {
		return 0
	}
	return float64(p.otherCPU) / float64(p.wall)
}

// capacityText says what the row's load costs at the loop's CPU per
// delivery, both processes, against the machine's cores.
func (p phaseResult) capacityText(s rowSpec) string {
	per := p.perDelivery(p.serverCPU + p.clientCPU)
	need := per.Seconds() * s.rate * float64(s.members)
	return fmt.Sprintf("whose %s per delivery (bench and clients) at %.0f deliveries/s is %.2f cores of %d",
		us(per), s.rate*float64(s.members), need, runtime.NumCPU())
}

func (p phaseResult) quantiles() string {
	return fmt.Sprintf("%s / %s / %s", ms(time.Duration(p.rep.P50)), ms(time.Duration(p.rep.P99)), ms(time.Duration(p.rep.Max)))
}

func metText(ok bool) string {
	if ok {
		return "met"
	}
	return "**missed**"
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d)/1e6) }
func us(d time.Duration) string { return fmt.Sprintf("%.2f µs", float64(d)/1e3) }
