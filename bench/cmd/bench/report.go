package main

import (
	_ "embed"
	"fmt"
	"io"
	"os"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/chiws/chiws/bench"
)

//go:embed notes.md
var notes string

// why explains the goals this harness has found missed; it holds no figures.
//
//go:embed why.md
var why string

type report struct {
	plan        plan
	smoke       bool
	elapsed     time.Duration
	passThrough []benchRow
	upgrade     []benchRow
	floor       []float64 // ns per write+read pair, bench.BenchSyscallFloor
	connect     map[string][]bench.ConnectResult
	echo        []map[string][]bench.EchoResult
	idle        map[string][]bench.IdleResult
	headroom    map[string]map[int]bench.IdleResult
	churn       *bench.ChurnResult
	h2Connect   map[string][]bench.ConnectResult
	h2Echo      map[string][]bench.EchoResult
	goals       []goal
	broken      bool
}

// goal is a row of the Goals table: an acceptance criterion with met
// computed from this run's measurements, or (info) a figure reported
// without a criterion.
type goal struct {
	name, measured string
	met, info      bool
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// ratio is the median of the per-round ratios a[i]/b[i].
func ratio(a, b []float64) float64 { return median(ratios(a, b)) }

// ratios is the per-round ratios a[i]/b[i], leaving out the rounds where
// b[i] is 0. Round i of every candidate ran in the same round (rounds and
// inProcess interleave the candidates).
func ratios(a, b []float64) []float64 {
	var r []float64
	for i := range min(len(a), len(b)) {
		if b[i] != 0 {
			r = append(r, a[i]/b[i])
		}
	}
	return r
}

// diffs is the per-round differences a[i]-b[i].
func diffs(a, b []float64) []float64 {
	d := make([]float64, min(len(a), len(b)))
	for i := range d {
		d[i] = a[i] - b[i]
	}
	return d
}

// quantile is the q-quantile of v, interpolated between the nearest
// order statistics (the median for q = 0.5).
func quantile(v []float64, q float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Sorted(slices.Values(v))
	pos := q * float64(len(s)-1)
	i := int(pos)
	if i+1 >= len(s) {
		return s[len(s)-1]
	}
	return s[i] + (pos-float64(i))*(s[i+1]-s[i])
}

// span is the range of the per-round values v in format f, for a table
// cell: "min to max".
func span(v []float64, f string) string {
	if len(v) == 0 {
		return "-"
	}
	return fmt.Sprintf(f+" to "+f, slices.Min(v), slices.Max(v))
}

// spread describes the per-round values v in format f: the median, the
// range, the interquartile range and the number of rounds.
func spread(v []float64, f string) string {
	if len(v) == 0 {
		return "no rounds"
	}
	return fmt.Sprintf(f+" (per round "+f+" to "+f+", IQR "+f+" to "+f+", n=%d)", median(v),
		slices.Min(v), slices.Max(v), quantile(v, 0.25), quantile(v, 0.75), len(v))
}

func each[T any](v []T, f func(T) float64) []float64 {
	out := make([]float64, len(v))
	for i, x := range v {
		out[i] = f(x)
	}
	return out
}

func (g goal) result() string {
	if g.info {
		return "info"
	}
	return metStr(g.met)
}

func metStr(ok bool) string {
	if ok {
		return "met"
	}
	return "**missed**"
}

func kib(b float64) string { return fmt.Sprintf("%.2f KiB", b/1024) }

func (r *report) addGoal(name string, met bool, format string, args ...any) {
	r.goals = append(r.goals, goal{name: name, measured: fmt.Sprintf(format, args...), met: met})
}

// addInfo adds a row that reports a figure without a criterion.
func (r *report) addInfo(name string, format string, args ...any) {
	r.goals = append(r.goals, goal{name: name, measured: fmt.Sprintf(format, args...), info: true})
}

func osRelease() string {
	b, err := os.ReadFile("/proc/sys/kernel/osrelease")
	if err != nil {
		return runtime.GOOS
	}
	return "Linux " + strings.TrimSpace(string(b))
}

func (r *report) render(w io.Writer) {
	var body strings.Builder
	r.renderBody(&body)

	fmt.Fprintln(w, "# Benchmarks")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "chiws against raw coder/websocket (the library it wraps) and gorilla/websocket v1.5.3,")
	fmt.Fprintln(w, "side by side on loopback. Regenerate this file with one command (about 10 minutes):")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "```sh")
	fmt.Fprintln(w, "go run ./bench/cmd/bench -out docs/benchmarks.md")
	fmt.Fprintln(w, "```")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "The in-process benchmarks also run under `go test -bench . ./bench/`.")
	fmt.Fprintln(w, "The whole file is written by the harness: the tables and the Goals (met or missed) from this")
	fmt.Fprintln(w, "run's measurements, the Method and findings from bench/cmd/bench/notes.md (which holds no")
	fmt.Fprintln(w, "figures), and \"What is left, and why\" from the goals missed. Figures are never typed by hand.")
	fmt.Fprintln(w)
	fmt.Fprintf(w, "Machine: %d CPUs (GOMAXPROCS %d), %s, %s/%s, %s. Run on %s, took %v",
		runtime.NumCPU(), runtime.GOMAXPROCS(0), runtime.Version(), runtime.GOOS, runtime.GOARCH,
		osRelease(), time.Now().UTC().Format("2006-01-02 15:04 MST"), r.elapsed.Round(time.Second))
	if r.smoke {
		fmt.Fprint(w, " (**smoke run: tiny counts, numbers meaningless**)")
	}
	fmt.Fprintln(w, ".")
	fmt.Fprintln(w, "The machine is shared and noisy: read the ratios (median of per-round ratios, candidates")
	fmt.Fprintln(w, "alternating within each round), not the absolute times. chiws is also set against chi-coder,")
	fmt.Fprintln(w, "the same chi router and handlers without the middleware (the route calls `websocket.Accept`):")
	fmt.Fprintln(w, "those rows give the range and interquartile range (IQR) of the per-round ratios. More rounds:")
	fmt.Fprintln(w, "`go run ./bench/cmd/bench -rounds 10 -only upgrade,connect,echo,idle -out FILE`.")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "## Goals")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Computed from the measurements of this run, side by side; the number is the section below.")
	fmt.Fprintln(w, "Rows marked info report a figure without a criterion.")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| Goal | Measured | Result |")
	fmt.Fprintln(w, "| --- | --- | --- |")
	// By section number; the order of the checks within a section is kept.
	slices.SortStableFunc(r.goals, func(a, b goal) int {
		return strings.Compare(strings.SplitN(a.name, ".", 2)[0], strings.SplitN(b.name, ".", 2)[0])
	})
	for _, g := range r.goals {
		fmt.Fprintf(w, "| %s | %s | %s |\n", g.name, g.measured, g.result())
	}
	fmt.Fprintln(w)
	io.WriteString(w, body.String())
	fmt.Fprintln(w)
	io.WriteString(w, notes)
	fmt.Fprintln(w)
	r.renderLeft(w)
}

// renderLeft writes "What is left, and why": the goals this run missed,
// listed from the table, and a placeholder for their explanation.
func (r *report) renderLeft(w io.Writer) {
	fmt.Fprintln(w, "## What is left, and why")
	fmt.Fprintln(w)
	var missed []goal
	for _, g := range r.goals {
		if !g.info && !g.met {
			missed = append(missed, g)
		}
	}
	if len(missed) == 0 {
		fmt.Fprintln(w, "Every goal in the table was met in this run.")
		return
	}
	fmt.Fprintln(w, "Goals missed in this run (listed from the Goals table):")
	fmt.Fprintln(w)
	for _, g := range missed {
		fmt.Fprintf(w, "- **%s**: %s.\n", g.name, g.measured)
	}
	fmt.Fprintln(w)
	io.WriteString(w, why)
}

func (r *report) renderBody(w io.Writer) {
	p := r.plan
	if r.passThrough != nil {
		fmt.Fprintf(w, "## 1. Pass-through (in process, %d rounds of %s)\n\n", p.rounds, p.benchtime)
		fmt.Fprintln(w, "An ordinary `GET /` (no upgrade) through each stack to a handler that writes 204.")
		fmt.Fprintln(w)
		fmt.Fprintln(w, "| Stack | ns/op | B/op | allocs/op | time vs same stack without chiws |")
		fmt.Fprintln(w, "| --- | ---: | ---: | ---: | ---: |")
		byName := map[string]benchRow{}
		for _, row := range r.passThrough {
			byName[row.name] = row
		}
		base := map[string]string{"chiws(bare)": "bare", "chi+chiws": "chi"}
		for _, row := range r.passThrough {
			rel := "(baseline)"
			if b, ok := base[row.name]; ok {
				rel = fmt.Sprintf("%.2fx", ratio(row.ns, byName[b].ns))
			}
			fmt.Fprintf(w, "| %s | %.1f | %.0f | %.0f | %s |\n", row.name, median(row.ns), median(row.bytes), median(row.allocs), rel)
		}
		fmt.Fprintln(w)
		extra := median(byName["chiws(bare)"].allocs) - median(byName["bare"].allocs)
		extraChi := median(byName["chi+chiws"].allocs) - median(byName["chi"].allocs)
		rChi := ratio(byName["chi+chiws"].ns, byName["chi"].ns)
		rBare := ratio(byName["chiws(bare)"].ns, byName["bare"].ns)
		r.addGoal("1. Pass-through: +0 allocations (bare and behind chi)", extra == 0 && extraChi == 0,
			"%+.0f allocs (bare), %+.0f (behind chi)", extra, extraChi)
		r.addInfo("1. Pass-through: time",
			"%.3fx behind chi; %.2fx against an empty handler (%+.1f ns)", rChi, rBare,
			median(byName["chiws(bare)"].ns)-median(byName["bare"].ns))
	}
	if r.upgrade != nil {
		fmt.Fprintf(w, "## 2. Upgrade (in process, %d rounds of %s)\n\n", p.rounds, p.benchtime)
		fmt.Fprintln(w, "One upgrade request, accepted and closed at once (no close handshake), on the same fake")
		fmt.Fprintln(w, "hijackable connection for every candidate (bench.HijackWriter behaves like net/http's).")
		fmt.Fprintln(w)
		fmt.Fprintln(w, "| Candidate | ns/op | B/op | allocs/op | time vs coder | allocs vs coder |")
		fmt.Fprintln(w, "| --- | ---: | ---: | ---: | ---: | ---: |")
		var coder, chiws, chiCoder benchRow
		for _, row := range r.upgrade {
			switch row.name {
			case bench.Coder:
				coder = row
			case bench.Chiws:
				chiws = row
			case bench.ChiCoder:
				chiCoder = row
			}
		}
		for _, row := range r.upgrade {
			fmt.Fprintf(w, "| %s | %.0f | %.0f | %.0f | %.2fx | %+.0f |\n", row.name, median(row.ns), median(row.bytes),
				median(row.allocs), ratio(row.ns, coder.ns), median(row.allocs)-median(coder.allocs))
		}
		fmt.Fprintln(w)
		dAllocs := diffs(chiws.allocs, chiCoder.allocs)
		fmt.Fprintf(w, "chiws against chi-coder (the same chi router without the middleware), per round: time %s;\n",
			spread(ratios(chiws.ns, chiCoder.ns), "%.2fx"))
		fmt.Fprintf(w, "allocations %s; bytes %s.\n\n", spread(dAllocs, "%+.0f"), spread(diffs(chiws.bytes, chiCoder.bytes), "%+.0f"))
		r.addGoal("2. Upgrade: at most +4 allocations over chi + coder/websocket (chi-coder, in process)", median(dAllocs) <= 4,
			"allocations %s; bytes %+.0f; time %.2fx", spread(dAllocs, "%+.0f"),
			median(diffs(chiws.bytes, chiCoder.bytes)), ratio(chiws.ns, chiCoder.ns))
		extra := median(chiws.allocs) - median(coder.allocs)
		rt := ratio(chiws.ns, coder.ns)
		r.addInfo("2. Upgrade: allocations and time over bare Accept (in process)",
			"%+.0f allocs (%+.0f from chi, %+.0f from chiws); %.2fx time (%.2fx over chi + bare Accept)", extra,
			median(chiCoder.allocs)-median(coder.allocs), median(chiws.allocs)-median(chiCoder.allocs),
			rt, ratio(chiws.ns, chiCoder.ns))
	}
	if r.connect != nil {
		fmt.Fprintf(w, "## 3. Connect rate (benchclient process, %d workers, %v per run, %d rounds)\n\n",
			p.connectWorkers, p.connectFor, p.rounds)
		fmt.Fprintln(w, "Each worker loops: dial, upgrade, close handshake. Handshake latency is dial to upgraded.")
		fmt.Fprintln(w, "chiws runs with its default keep-alive (armed on every socket; the sockets close long before")
		fmt.Fprintln(w, "it would fire).")
		fmt.Fprintln(w)
		fmt.Fprintln(w, "| Candidate | keep-alive armed | conns/s | p50 handshake | p99 handshake | rate vs coder | p99 vs coder | rate vs chi-coder (per round) | errors |")
		fmt.Fprintln(w, "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
		rate := func(c string) []float64 {
			return each(r.connect[c], func(x bench.ConnectResult) float64 { return x.PerSecond })
		}
		p99 := func(c string) []float64 {
			return each(r.connect[c], func(x bench.ConnectResult) float64 { return x.Handshake.P99 })
		}
		for _, c := range connectCandidates {
			p50 := each(r.connect[c], func(x bench.ConnectResult) float64 { return x.Handshake.P50 })
			errs := each(r.connect[c], func(x bench.ConnectResult) float64 { return float64(x.Errors) })
			vsChi := ratios(rate(c), rate(bench.ChiCoder))
			fmt.Fprintf(w, "| %s | %s | %.0f | %.0f µs | %.0f µs | %.3fx | %.2fx | %.3fx (%s) | %.0f |\n", c, armed(c, 0), median(rate(c)), median(p50),
				median(p99(c)), ratio(rate(c), rate(bench.Coder)), ratio(p99(c), p99(bench.Coder)),
				median(vsChi), span(vsChi, "%.2f"), median(errs))
		}
		fmt.Fprintln(w)
		rr, pr := ratio(rate(bench.Chiws), rate(bench.Coder)), ratio(p99(bench.Chiws), p99(bench.Coder))
		r.addGoal("3. Connect rate at least 0.95x raw coder/websocket", rr >= 0.95, "%.3fx", rr)
		rc := ratios(rate(bench.Chiws), rate(bench.ChiCoder))
		r.addGoal("3. Connect rate at least 0.97x chi + coder/websocket (chi-coder)", median(rc) >= 0.97,
			"%s; p99 handshake %.2fx", spread(rc, "%.3fx"), ratio(p99(bench.Chiws), p99(bench.ChiCoder)))
		r.addInfo("3. p99 handshake vs raw coder/websocket", "%.2fx", pr)
	}
	for _, e := range r.echo {
		var size int
		for _, v := range e {
			size = v[0].Size
		}
		fmt.Fprintf(w, "## 4. Echo, %d B messages (%d connections, %v window, %d rounds)\n\n",
			size, p.echoConns, p.echoWindow, p.rounds)
		fmt.Fprintln(w, "Every connection sends a message and waits for its echo, in a loop. CPU is the server")
		fmt.Fprintln(w, "process's user+system time (getrusage) over the window. chiws has its keep-alive armed")
		fmt.Fprintf(w, "(every %v); the sockets are busy, so it should find none of them quiet and send no ping.\n", p.keepAlive)
		fmt.Fprintln(w, "coder, chi-coder and gorilla have no keep-alive.")
		fmt.Fprintln(w)
		fmt.Fprintln(w, "| Candidate | keep-alive armed | msgs/s | p50 | p99 | p99.9 | server CPU s / M msgs | msgs/s vs coder | CPU/msg vs coder | msgs/s vs chi-coder (per round) | CPU/msg vs chi-coder (per round) |")
		fmt.Fprintln(w, "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
		f := func(c string, g func(bench.EchoResult) float64) []float64 { return each(e[c], g) }
		rate := func(x bench.EchoResult) float64 { return x.PerSecond }
		cpu := func(x bench.EchoResult) float64 { return x.CPUPerMsgM }
		for _, c := range echoCandidates {
			rc := ratios(f(c, rate), f(bench.ChiCoder, rate))
			cc := ratios(f(c, cpu), f(bench.ChiCoder, cpu))
			fmt.Fprintf(w, "| %s | %s | %.0f | %.2f ms | %.2f ms | %.2f ms | %.1f | %.3fx | %.2fx | %.3fx (%s) | %.3fx (%s) |\n", c, armed(c, keepAliveFor(p, c)), median(f(c, rate)),
				median(f(c, func(x bench.EchoResult) float64 { return x.Latency.P50 }))/1e3,
				median(f(c, func(x bench.EchoResult) float64 { return x.Latency.P99 }))/1e3,
				median(f(c, func(x bench.EchoResult) float64 { return x.Latency.P999 }))/1e3,
				median(f(c, cpu)), ratio(f(c, rate), f(bench.Coder, rate)), ratio(f(c, cpu), f(bench.Coder, cpu)),
				median(rc), span(rc, "%.2f"), median(cc), span(cc, "%.2f"))
		}
		fmt.Fprintln(w)
		rr := ratio(f(bench.Chiws, rate), f(bench.Coder, rate))
		var pings []float64
		for _, x := range e[bench.Chiws] {
			pings = append(pings, float64(x.PingsSent))
		}
		armedOK := keepAliveFor(p, bench.Chiws) > 0 && keepAliveFor(p, bench.Coder) < 0
		r.addGoal(fmt.Sprintf("4. Echo %d B, %d busy sockets, chiws keep-alive armed (%v): at least 0.97x raw coder/websocket without keep-alive, msgs/s",
			size, p.echoConns, p.keepAlive), rr >= 0.97 && armedOK && p.echoConns >= 1000,
			"%.3fx (CPU per message %.2fx; chiws pings sent in the window: %.0f)%s",
			rr, ratio(f(bench.Chiws, cpu), f(bench.Coder, cpu)), median(pings), echoShort(p, armedOK))
		counted := armedOK && p.echoConns >= 1000
		rc := ratios(f(bench.Chiws, rate), f(bench.ChiCoder, rate))
		cc := ratios(f(bench.Chiws, cpu), f(bench.ChiCoder, cpu))
		where := fmt.Sprintf("4. Echo %d B, %d busy sockets, chiws keep-alive armed (%v), against chi + coder/websocket (chi-coder) without keep-alive",
			size, p.echoConns, p.keepAlive)
		r.addGoal(where+": msgs/s at least 0.98x", median(rc) >= 0.98 && counted,
			"%s%s", spread(rc, "%.3fx"), echoShort(p, armedOK))
		r.addGoal(where+": server CPU per message at most 1.03x", median(cc) <= 1.03 && counted,
			"%s%s", spread(cc, "%.3fx"), echoShort(p, armedOK))
	}
	if r.idle != nil {
		r.renderIdle(w)
	}
	if r.headroom != nil {
		r.renderHeadroom(w)
	}
	if c := r.churn; c != nil {
		fmt.Fprintf(w, "## 7. Churn (chiws, keep-alive armed every %v)\n\n", p.keepAlive)
		fmt.Fprintf(w, "%d connect/close cycles (16 workers, %.1f s, %d errors) while %d sockets stay open.\n",
			c.Cycles, c.Seconds, c.Errors, c.Open)
		fmt.Fprintln(w, "Snapshots after two GCs.")
		fmt.Fprintln(w)
		fmt.Fprintln(w, "| Stage | open sockets | goroutines | live heap | stacks | RSS |")
		fmt.Fprintln(w, "| --- | ---: | ---: | ---: | ---: | ---: |")
		for _, st := range []struct {
			name string
			s    bench.ServerStats
		}{{"start", c.Base}, {"long-lived sockets open", c.WithOpen}, {"after half the cycles", c.Half},
			{"after all the cycles", c.After}, {"all closed", c.Final}} {
			fmt.Fprintf(w, "| %s | %d | %d | %.2f MiB | %.2f MiB | %.1f MiB |\n", st.name, st.s.Active, st.s.Goroutines,
				float64(st.s.HeapLive)/(1<<20), float64(st.s.StackInuse)/(1<<20), float64(st.s.RSS)/(1<<20))
		}
		fmt.Fprintln(w)
		// The baseline is the idle server plus one goroutine per
		// long-lived socket: the WithOpen snapshot may catch pings in
		// flight.
		dg := c.After.Goroutines - (c.Base.Goroutines + c.Open)
		dFinal := c.Final.Goroutines - c.Base.Goroutines
		dh := float64(c.After.HeapLive) - float64(c.WithOpen.HeapLive)
		second := float64(c.After.HeapLive) - float64(c.Half.HeapLive)
		perCycle := second / float64(c.Cycles-c.Cycles/2)
		ok := dg <= 2 && dFinal <= 2 && c.After.Active == int64(c.Open) &&
			second < 0.05*float64(c.WithOpen.HeapLive)
		check := "goroutines back to baseline and heap growth in the second half under 5%"
		if !ok {
			check = "**not** back to baseline, or heap grew 5% or more in the second half"
		}
		r.addInfo("7. Churn (chiws, keep-alive armed)",
			"%s: %+d goroutines with the long-lived sockets open, %+d after closing all; heap %+.2f MiB over all "+
				"%d cycles, %+.2f MiB (%+.1f B/cycle) in the second half",
			check, dg, dFinal, dh/(1<<20), c.Cycles, second/(1<<20), perCycle)
	}
	if r.h2Connect != nil || r.h2Echo != nil {
		r.renderH2(w)
	}
}

func (r *report) renderIdle(w io.Writer) {
	p := r.plan
	type per struct{ heap, stack, gor, rss, mem []float64 }
	m := map[string]*per{}
	for _, c := range idleCandidates {
		x := &per{}
		for _, ir := range r.idle[c] {
			n := float64(ir.Conns)
			d := func(f func(bench.ServerStats) float64) float64 { return (f(ir.Loaded) - f(ir.Base)) / n }
			x.heap = append(x.heap, d(func(s bench.ServerStats) float64 { return float64(s.HeapLive) }))
			x.stack = append(x.stack, d(func(s bench.ServerStats) float64 { return float64(s.StackInuse) }))
			x.gor = append(x.gor, d(func(s bench.ServerStats) float64 { return float64(s.Goroutines) }))
			x.rss = append(x.rss, d(func(s bench.ServerStats) float64 { return float64(s.RSS) }))
			x.mem = append(x.mem, x.heap[len(x.heap)-1]+x.stack[len(x.stack)-1])
		}
		m[c] = x
	}
	fmt.Fprintf(w, "## 5. Idle footprint (%d connections, %d rounds)\n\n", p.idleConns, p.idleRounds)
	fmt.Fprintf(w, "Server in one process, clients in another (every client reads, so pings are answered).\n")
	fmt.Fprintf(w, "Per connection: (snapshot with the sockets open - snapshot before any) / connections, both after\n")
	fmt.Fprintf(w, "two GCs, taken at the end of the keep-alive window of section 6 (pings in flight included).\n")
	fmt.Fprintf(w, "chiws, coder-ping and gorilla-ping ping every %v; coder, chi-coder and gorilla never ping.\n\n", p.keepAlive)
	fmt.Fprintln(w, "| Candidate | keep-alive armed | heap/conn | stack/conn | heap+stack/conn | heap+stack vs coder-ping | heap/conn vs chi-coder (per round, KiB) | goroutines/conn | RSS/conn |")
	fmt.Fprintln(w, "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
	// heapDiff is c's heap per socket minus base's, per round, in KiB.
	heapDiff := func(c, base string) []float64 {
		return each(diffs(m[c].heap, m[base].heap), func(d float64) float64 { return d / 1024 })
	}
	for _, c := range idleCandidates {
		x := m[c]
		dc := heapDiff(c, bench.ChiCoder)
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %+.2f KiB | %+.2f (%s) | %.3f | %s |\n", c, armed(c, keepAliveFor(p, c)),
			kib(median(x.heap)), kib(median(x.stack)), kib(median(x.mem)),
			(median(x.mem)-median(m[bench.CoderPing].mem))/1024, median(dc), span(dc, "%+.2f"), median(x.gor), kib(median(x.rss)))
	}
	fmt.Fprintln(w)
	enough := p.idleConns >= 15000 && keepAliveFor(p, bench.Chiws) == time.Second && keepAliveFor(p, bench.CoderPing) == time.Second
	where := fmt.Sprintf("keep-alive every %v, %d idle sockets", p.keepAlive, p.idleConns)
	short := ""
	if !enough {
		short = " (not counted: needs 15,000+ idle sockets and a 1 s keep-alive)"
	}
	ch, cp := m[bench.Chiws], m[bench.CoderPing]
	gc := median(ch.gor)
	r.addGoal(fmt.Sprintf("5. Idle (%s): at most 1.05 goroutines per idle socket (chiws)", where), gc <= 1.05 && enough,
		"%.3f (coder-ping %.3f, coder without keep-alive %.3f)%s", gc, median(cp.gor), median(m[bench.Coder].gor), short)
	hc, hp := median(ch.heap), median(cp.heap)
	r.addGoal(fmt.Sprintf("5. Idle (%s): heap per idle socket after GC at most raw coder/websocket's with the same keep-alive (coder-ping)", where),
		hc <= hp && enough,
		"%s vs %s, difference %s KiB; heap+stack %s vs %s; RSS %s vs %s%s", kib(hc), kib(hp),
		spread(heapDiff(bench.Chiws, bench.CoderPing), "%+.2f"),
		kib(median(ch.mem)), kib(median(cp.mem)), kib(median(ch.rss)), kib(median(cp.rss)), short)
	r.addInfo(fmt.Sprintf("5. Idle (%s): heap per idle socket after GC vs raw coder/websocket and chi + coder/websocket, both without keep-alive (chiws's pings in flight included)", where),
		"%s vs %s (coder), difference %s KiB; vs %s (chi-coder), difference %s KiB", kib(hc),
		kib(median(m[bench.Coder].heap)), spread(heapDiff(bench.Chiws, bench.Coder), "%+.2f"),
		kib(median(m[bench.ChiCoder].heap)), spread(heapDiff(bench.Chiws, bench.ChiCoder), "%+.2f"))
	r.addInfo("5. Idle: heap+stack per socket vs raw coder/websocket without keep-alive, and vs gorilla",
		"%+.2f KiB vs coder, %+.2f KiB vs gorilla, %+.2f KiB vs gorilla-ping",
		(median(ch.mem)-median(m[bench.Coder].mem))/1024, (median(ch.mem)-median(m[bench.Gorilla].mem))/1024,
		(median(ch.mem)-median(m[bench.GorillaPing].mem))/1024)

	fmt.Fprintf(w, "## 6. Keep-alive cost (%d idle connections, keep-alive every %v, %v window after %v settling)\n\n",
		p.idleConns, p.keepAlive, p.idleWindow, p.idleSettle)
	fmt.Fprintln(w, "Server CPU over the window divided by the pings sent in it (chiws's Stats().PingsSent,")
	fmt.Fprintln(w, "coder-ping's and gorilla-ping's counters). Extrapolation: CPU per ping x 100,000 connections / 30 s.")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| Candidate | keep-alive armed | pings/s | server CPU (% of a core) | CPU per ping | vs coder-ping | 100k conns @ 30 s |")
	fmt.Fprintln(w, "| --- | --- | ---: | ---: | ---: | ---: | ---: |")
	perPing := map[string][]float64{}
	for _, c := range idleCandidates {
		var pps, load, cpp []float64
		for _, ir := range r.idle[c] {
			cpu := ir.WindowEnd.CPU - ir.WindowStart.CPU
			pings := float64(ir.WindowEnd.PingsSent - ir.WindowStart.PingsSent)
			pps = append(pps, pings/ir.Seconds)
			load = append(load, 100*cpu/ir.Seconds)
			if pings > 0 {
				cpp = append(cpp, cpu/pings)
			}
		}
		perPing[c] = cpp
		ka := armed(c, keepAliveFor(p, c))
		if len(cpp) == 0 {
			fmt.Fprintf(w, "| %s | %s | 0 | %.1f%% | - | - | - |\n", c, ka, median(load))
			continue
		}
		fmt.Fprintf(w, "| %s | %s | %.0f | %.1f%% | %.1f µs | %.2fx | %.2f%% of a core |\n", c, ka, median(pps), median(load),
			median(cpp)*1e6, ratio(cpp, perPing[bench.CoderPing]), 100*median(cpp)*100000/30)
	}
	fmt.Fprintln(w)
	floorExt := 100 * median(r.floor) / 1e9 * 100000 / 30
	if len(r.floor) > 0 {
		fmt.Fprintf(w, "System call floor (in process, `bench.BenchSyscallFloor`, median of %d runs): one write(2) of 2 bytes\n", len(r.floor))
		fmt.Fprintf(w, "on loopback TCP and one read(2) of 2 bytes at the other end, what a server does at the least per\n")
		fmt.Fprintf(w, "ping (write the ping, read the pong), with no WebSocket code and no scheduling: %.1f µs.\n", median(r.floor)/1e3)
		fmt.Fprintf(w, "At 100,000 connections and a 30 s interval that alone is %.2f%% of a core.\n\n", floorExt)
	}
	rc := ratio(perPing[bench.Chiws], perPing[bench.CoderPing])
	rg := ratio(perPing[bench.GorillaPing], perPing[bench.CoderPing])
	r.addGoal(fmt.Sprintf("6. Idle (%s): keep-alive CPU per ping at most 1.0x coder-ping (a goroutine per socket, ticker + Ping)", where),
		rc <= 1.0 && len(perPing[bench.Chiws]) > 0 && enough,
		"%.2fx (%.1f µs vs %.1f µs)%s", rc, median(perPing[bench.Chiws])*1e6, median(perPing[bench.CoderPing])*1e6, short)
	ext := 100 * median(perPing[bench.Chiws]) * 100000 / 30
	r.addInfo("6. Keep-alive: gorilla-ping's CPU per ping; chiws extrapolated to 100k sockets / 30 s",
		"gorilla-ping %.2fx coder-ping; chiws %.2f%% of a core (the system calls alone: %.2f%%)", rg, ext, floorExt)
}

func (r *report) renderHeadroom(w io.Writer) {
	fmt.Fprintf(w, "## 5b. Stack per idle connection under application middleware (%d connections, no ping in flight)\n\n",
		r.plan.headroomConns)
	fmt.Fprintf(w, "chiws runs with its default keep-alive (%s; armed, no ping is sent during the run),\n",
		armed(bench.Chiws, 0))
	fmt.Fprintln(w, "coder and chi-coder without. This is the steady state between pings.")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "The candidate runs under N extra nested calls of about 100 bytes of stack each (bench.Pad), a")
	fmt.Fprintln(w, "stand-in for the application's own middleware. Goroutine stacks are powers of two, and a stack")
	fmt.Fprintln(w, "that grew during the upgrade may stay grown while the socket is parked in Read.")
	fmt.Fprintln(w)
	fmt.Fprint(w, "| Candidate |")
	for _, p := range headroomPads {
		fmt.Fprintf(w, " stack/conn, +%d frames |", p)
	}
	fmt.Fprintln(w, " heap/conn |")
	fmt.Fprint(w, "| --- |")
	for range headroomPads {
		fmt.Fprint(w, " ---: |")
	}
	fmt.Fprintln(w, " ---: |")
	for _, c := range headroomCandidates {
		fmt.Fprintf(w, "| %s |", c)
		for _, p := range headroomPads {
			ir := r.headroom[c][p]
			fmt.Fprintf(w, " %s |", kib((float64(ir.Loaded.StackInuse)-float64(ir.Base.StackInuse))/float64(ir.Conns)))
		}
		ir := r.headroom[c][0]
		fmt.Fprintf(w, " %s |\n", kib((float64(ir.Loaded.HeapLive)-float64(ir.Base.HeapLive))/float64(ir.Conns)))
	}
	fmt.Fprintln(w)
	coder, chiws := r.headroom[bench.Coder][0], r.headroom[bench.Chiws][0]
	mem := func(ir bench.IdleResult) float64 {
		return (float64(ir.Loaded.HeapLive+ir.Loaded.StackInuse) - float64(ir.Base.HeapLive+ir.Base.StackInuse)) / float64(ir.Conns)
	}
	r.addInfo("5b. Idle between pings (chiws keep-alive armed, none in flight): heap+stack per socket vs coder",
		"%+.2f KiB (table 5b)", (mem(chiws)-mem(coder))/1024)
}

// echoShort says why an echo goal cannot be met with plan p, or nothing.
func echoShort(p plan, armedOK bool) string {
	if armedOK && p.echoConns >= 1000 {
		return ""
	}
	return " (not counted: needs 1,000+ sockets, chiws's keep-alive armed and coder's off)"
}

// renderH2 writes section 9: chiws over h2c beside chiws over HTTP/1.1.
func (r *report) renderH2(w io.Writer) {
	p := r.plan
	fmt.Fprintf(w, "## 9. HTTP/2: connect rate and echo over h2 beside HTTP/1.1 (chiws, %d rounds)\n\n", p.rounds)
	fmt.Fprintln(w, "chiws only: no other Go WebSocket library accepts RFC 8441's extended CONNECT. Both rows")
	fmt.Fprintln(w, "run against the same benchserver: started with `GODEBUG=http2xconnect=1` and `-h2c`, it serves")
	fmt.Fprintln(w, "HTTP/1.1 and cleartext HTTP/2 with prior knowledge (h2c, no TLS) on one listener")
	fmt.Fprintln(w, "(`http.Server.Protocols`), with `http.Server.HTTP2 = &http.HTTP2Config{...}`:")
	fmt.Fprintf(w, "`MaxConcurrentStreams: %d` (net/http's default is 250 per connection),\n", bench.H2MaxConcurrentStreams)
	fmt.Fprintf(w, "`MaxReceiveBufferPerStream: %d << 10`, `MaxReceiveBufferPerConnection: %d` (docs/http2.md).\n",
		bench.H2MaxReceiveBufferPerStream>>10, bench.H2MaxReceiveBufferPerConnection)
	fmt.Fprintln(w, "Only the client differs:")
	fmt.Fprintln(w)
	fmt.Fprintf(w, "- **chiws-h1**: coder/websocket's `Dial` on net/http's Transport, an HTTP/1.1 upgrade and a TCP\n")
	fmt.Fprintf(w, "  connection per socket, from %d source addresses.\n", p.sources)
	fmt.Fprintf(w, "- **chiws-h2c**: the same `Dial` through a RoundTripper that sends the upgrade as an extended\n")
	fmt.Fprintf(w, "  CONNECT on golang.org/x/net/http2's Transport (bench/h2client.go), one Transport per source\n")
	fmt.Fprintf(w, "  address (%d): the sockets of a source are streams on one TCP connection (column \"TCP conns\":\n", p.sources)
	fmt.Fprintln(w, "  the connections the client dialled per run). Its request body is an `io.Pipe` per stream, so")
	fmt.Fprintln(w, "  client-side costs that HTTP/1.1 does not have are in the msgs/s and latencies of this row;")
	fmt.Fprintln(w, "  server CPU per message is the server process's alone. Client and server share the cores.")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Ratios are h2c / HTTP/1.1, the median of per-round ratios.")
	fmt.Fprintln(w)
	if r.h2Connect != nil {
		fmt.Fprintf(w, "### 9a. h2c connect rate beside HTTP/1.1 (%d workers, %v per run)\n\n", p.connectWorkers, p.connectFor)
		fmt.Fprintln(w, "Section 3's loop: dial, upgrade, close handshake; handshake latency is dial to upgraded. Over")
		fmt.Fprintln(w, "h2c a dial opens a stream on a connection the transport already has (the first dial of each")
		fmt.Fprintln(w, "source opens it), so there is no TCP handshake or teardown per socket. chiws runs with its")
		fmt.Fprintln(w, "default keep-alive (armed; the sockets close long before it would fire).")
		fmt.Fprintln(w)
		fmt.Fprintln(w, "| Candidate | TCP conns | conns/s | p50 handshake | p99 handshake | rate h2c/h1 | p99 h2c/h1 | errors |")
		fmt.Fprintln(w, "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
		f := func(c string, g func(bench.ConnectResult) float64) []float64 { return each(r.h2Connect[c], g) }
		rate := func(x bench.ConnectResult) float64 { return x.PerSecond }
		p99 := func(x bench.ConnectResult) float64 { return x.Handshake.P99 }
		for _, c := range h2Candidates {
			fmt.Fprintf(w, "| %s | %.0f | %.0f | %.0f µs | %.0f µs | %.3fx | %.2fx | %.0f |\n", c,
				median(f(c, func(x bench.ConnectResult) float64 { return float64(x.TCPDials) })), median(f(c, rate)),
				median(f(c, func(x bench.ConnectResult) float64 { return x.Handshake.P50 })), median(f(c, p99)),
				ratio(f(c, rate), f(chiwsH1, rate)), ratio(f(c, p99), f(chiwsH1, p99)),
				median(f(c, func(x bench.ConnectResult) float64 { return float64(x.Errors) })))
		}
		fmt.Fprintln(w)
		r.addInfo("9. HTTP/2 (h2c) vs HTTP/1.1, chiws: connect rate",
			"%.3fx conns/s, p99 handshake %.2fx (h2c: streams on %.0f TCP connections; HTTP/1.1: one per socket)",
			ratio(f(chiwsH2C, rate), f(chiwsH1, rate)), ratio(f(chiwsH2C, p99), f(chiwsH1, p99)),
			median(f(chiwsH2C, func(x bench.ConnectResult) float64 { return float64(x.TCPDials) })))
	}
	if e := r.h2Echo; e != nil {
		fmt.Fprintf(w, "### 9b. h2c echo, %d B messages, beside HTTP/1.1 (%d sockets, %v window)\n\n", h2EchoSize, p.echoConns, p.echoWindow)
		fmt.Fprintf(w, "Section 4's loop: every socket sends a message and waits for its echo. chiws has its keep-alive\n")
		fmt.Fprintf(w, "armed (every %v); busy sockets get no ping. Over h2c the %d sockets are spread over the\n", p.keepAlive, p.echoConns)
		fmt.Fprintf(w, "sources' connections (about %d streams each, under the stream limit).\n", (p.echoConns+p.sources-1)/max(p.sources, 1))
		fmt.Fprintln(w)
		fmt.Fprintln(w, "| Candidate | TCP conns | msgs/s | p50 | p99 | p99.9 | server CPU s / M msgs | pings sent | msgs/s h2c/h1 | CPU/msg h2c/h1 |")
		fmt.Fprintln(w, "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
		f := func(c string, g func(bench.EchoResult) float64) []float64 { return each(e[c], g) }
		rate := func(x bench.EchoResult) float64 { return x.PerSecond }
		cpu := func(x bench.EchoResult) float64 { return x.CPUPerMsgM }
		p99 := func(x bench.EchoResult) float64 { return x.Latency.P99 }
		for _, c := range h2Candidates {
			fmt.Fprintf(w, "| %s | %.0f | %.0f | %.2f ms | %.2f ms | %.2f ms | %.1f | %.0f | %.3fx | %.2fx |\n", c,
				median(f(c, func(x bench.EchoResult) float64 { return float64(x.TCPDials) })), median(f(c, rate)),
				median(f(c, func(x bench.EchoResult) float64 { return x.Latency.P50 }))/1e3, median(f(c, p99))/1e3,
				median(f(c, func(x bench.EchoResult) float64 { return x.Latency.P999 }))/1e3, median(f(c, cpu)),
				median(f(c, func(x bench.EchoResult) float64 { return float64(x.PingsSent) })),
				ratio(f(c, rate), f(chiwsH1, rate)), ratio(f(c, cpu), f(chiwsH1, cpu)))
		}
		fmt.Fprintln(w)
		r.addInfo(fmt.Sprintf("9. HTTP/2 (h2c) vs HTTP/1.1, chiws: echo %d B, %d busy sockets", h2EchoSize, p.echoConns),
			"%.3fx msgs/s, p99 %.2fx, server CPU per message %.2fx (h2c: the sockets on %.0f TCP connections)",
			ratio(f(chiwsH2C, rate), f(chiwsH1, rate)), ratio(f(chiwsH2C, p99), f(chiwsH1, p99)),
			ratio(f(chiwsH2C, cpu), f(chiwsH1, cpu)),
			median(f(chiwsH2C, func(x bench.EchoResult) float64 { return float64(x.TCPDials) })))
	}
}
