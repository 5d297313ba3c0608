// Command bench runs the side-by-side benchmarks of chiws, raw
// coder/websocket and gorilla/websocket and writes a Markdown report:
//
//	go run ./bench/cmd/bench -out docs/benchmarks.md
//
// In-process parts (pass-through, upgrade) run in this process with
// testing.Benchmark; the network parts run a benchserver and a
// benchclient process, built into a temporary directory, over loopback.
// Candidates alternate within each round and the report gives medians of
// the rounds, the median per-round ratio to raw coder/websocket, and the
// per-round ratios of chiws to chi-coder (the same chi router without the
// middleware) with their spread. -rounds sets the number of rounds;
// -smoke runs everything with tiny counts in a few seconds.
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chiws/chiws"
	"github.com/chiws/chiws/bench"
	"github.com/chiws/chiws/internal/xconnect"
)

// plan holds the counts of a run.
type plan struct {
	rounds, idleRounds                int
	benchtime                         string
	connectFor                        time.Duration
	connectWorkers                    int
	echoConns                         int
	echoSizes                         []int
	echoWarmup, echoWindow            time.Duration
	idleConns                         int
	idleSettle, idleWindow, keepAlive time.Duration
	churnOpen, churnCycles            int
	headroomConns                     int
	sources                           int
}

var fullPlan = plan{
	rounds: 5, idleRounds: 3, benchtime: "300ms",
	connectFor: 3 * time.Second, connectWorkers: 16,
	echoConns: 1000, echoSizes: []int{128, 4096},
	echoWarmup: time.Second, echoWindow: 2 * time.Second,
	idleConns: 19000, idleSettle: time.Second, idleWindow: 3 * time.Second,
	keepAlive: time.Second,
	churnOpen: 5000, churnCycles: 100000,
	headroomConns: 2000,
	sources:       8,
}

var smokePlan = plan{
	rounds: 1, idleRounds: 1, benchtime: "20ms",
	connectFor: 500 * time.Millisecond, connectWorkers: 4,
	echoConns: 20, echoSizes: []int{128},
	echoWarmup: 100 * time.Millisecond, echoWindow: 300 * time.Millisecond,
	idleConns: 200, idleSettle: 200 * time.Millisecond, idleWindow: 1200 * time.Millisecond,
	keepAlive: time.Second,
	churnOpen: 50, churnCycles: 300,
	headroomConns: 50,
	sources:       2,
}

func main() {
	testing.Init()
	out := flag.String("out", "-", "write the Markdown report here (- for stdout)")
	smoke := flag.Bool("smoke", false, "tiny counts: checks that the harness works")
	only := flag.String("only", "", "comma-separated sections to run (passthrough,upgrade,connect,echo,idle,churn,h2); empty = all")
	nRounds := flag.Int("rounds", 0, "rounds of every section, candidates interleaved in each (0 = the plan's: 5, idle 3; -smoke 1)")
	profileDir := flag.String("cpuprofile", "", "write the server's CPU profile over each idle window of the keep-alive candidates into this directory")
	flag.Parse()
	log.SetFlags(log.Ltime)
	log.SetPrefix("bench: ")

	p := fullPlan
	if *smoke {
		p = smokePlan
	}
	if *nRounds > 0 {
		p.rounds, p.idleRounds = *nRounds, *nRounds
	}
	if err := flag.Set("test.benchtime", p.benchtime); err != nil {
		log.Fatal(err)
	}
	want := func(s string) bool { return *only == "" || strings.Contains(","+*only+",", ","+s+",") }

	started := time.Now()
	tmp, err := os.MkdirTemp("", "chiws-bench-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(tmp)
	h := &harness{plan: p, tmp: tmp, profileDir: *profileDir}
	if *profileDir != "" {
		if err := os.MkdirAll(*profileDir, 0o755); err != nil {
			log.Fatal(err)
		}
	}
	rep := &report{plan: p, smoke: *smoke}

	if want("passthrough") {
		log.Print("pass-through")
		rep.passThrough = h.inProcess(bench.PassThroughHandlers(), bench.BenchPassThrough)
	}
	if want("upgrade") {
		log.Print("upgrade")
		rep.upgrade = h.inProcess(bench.UpgradeHandlers(), bench.BenchUpgrade)
	}
	if want("connect") || want("echo") || want("idle") || want("churn") || want("h2") {
		if err := h.build(); err != nil {
			log.Fatal(err)
		}
	}
	if want("connect") {
		log.Print("connect rate")
		rep.connect, err = h.connect()
		check(err)
	}
	if want("echo") {
		for _, size := range p.echoSizes {
			log.Printf("echo %d B", size)
			r, err := h.echo(size)
			check(err)
			rep.echo = append(rep.echo, r)
		}
	}
	if want("idle") {
		log.Print("idle footprint and keep-alive")
		rep.idle, err = h.idle()
		check(err)
		log.Print("system call floor")
		for range p.rounds {
			rep.floor = append(rep.floor, float64(testing.Benchmark(bench.BenchSyscallFloor).NsPerOp()))
		}
	}
	if want("idle") {
		log.Print("stack headroom")
		rep.headroom, err = h.headroom()
		check(err)
	}
	if want("churn") {
		log.Print("churn")
		rep.churn, err = h.churnRun()
		check(err)
	}
	if want("h2") {
		log.Print("HTTP/2: connect rate")
		rep.h2Connect, err = h.h2Connect()
		check(err)
		log.Printf("HTTP/2: echo %d B", h2EchoSize)
		rep.h2Echo, err = h.h2Echo()
		check(err)
	}
	rep.elapsed = time.Since(started)

	var buf bytes.Buffer
	rep.render(&buf)
	if *out == "-" {
		_, _ = os.Stdout.Write(buf.Bytes())
	} else if err := os.WriteFile(*out, buf.Bytes(), 0o644); err != nil {
		log.Fatal(err)
	}
	log.Printf("done in %v", rep.elapsed.Round(time.Second))
	if rep.broken {
		log.Fatal("a section produced no result")
	}
}

func check(err error) {
	if err != nil {
		log.Fatal(err)
	}
}

type harness struct {
	plan                plan
	tmp                 string
	serverBin, clientBn string
	profileDir          string // -cpuprofile: keep-alive candidates' idle-window CPU profiles
}

// --- in-process -------------------------------------------------------

// benchRow is one candidate's per-round results.
type benchRow struct {
	name              string
	ns, bytes, allocs []float64
}

func (h *harness) inProcess(hs []bench.NamedHandler, fn func(*testing.B, http.Handler)) []benchRow {
	rows := make([]benchRow, len(hs))
	for i, c := range hs {
		rows[i].name = c.Name
	}
	for round := range h.plan.rounds {
		for k := range hs {
			i := (k + round) % len(hs) // rotate the order each round
			r := testing.Benchmark(func(b *testing.B) { fn(b, hs[i].Handler) })
			rows[i].ns = append(rows[i].ns, float64(r.NsPerOp()))
			rows[i].bytes = append(rows[i].bytes, float64(r.AllocedBytesPerOp()))
			rows[i].allocs = append(rows[i].allocs, float64(r.AllocsPerOp()))
		}
	}
	return rows
}

// --- processes ----------------------------------------------------------

func (h *harness) build() error {
	h.serverBin = filepath.Join(h.tmp, "benchserver")
	h.clientBn = filepath.Join(h.tmp, "benchclient")
	cmd := exec.Command("go", "build", "-o", h.tmp+string(os.PathSeparator),
		"github.com/chiws/chiws/bench/cmd/benchserver", "github.com/chiws/chiws/bench/cmd/benchclient")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("building the benchmark binaries: %w", err)
	}
	return nil
}

// server is a running benchserver.
type server struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	addr   string
	ctl    string
	stderr bytes.Buffer
}

// serverOpts selects a benchserver run.
type serverOpts struct {
	candidate string
	keepAlive time.Duration
	pad       int
	// h2c serves cleartext HTTP/2 beside HTTP/1.1 (benchserver -h2c),
	// with GODEBUG=http2xconnect=1 in the server's environment.
	h2c bool
}

func (h *harness) startServer(o serverOpts) (*server, error) {
	s := &server{}
	candidate := o.candidate
	args := []string{"-candidate", candidate, "-keepalive", o.keepAlive.String(), "-pad", fmt.Sprint(o.pad), "-max", "10m"}
	if o.h2c {
		args = append(args, "-h2c")
	}
	s.cmd = exec.Command(h.serverBin, args...)
	if o.h2c {
		// net/http reads it when the process starts; of duplicate keys
		// in Env, os/exec uses the last.
		godebug := os.Getenv("GODEBUG")
		if godebug != "" {
			godebug += ","
		}
		s.cmd.Env = append(os.Environ(), "GODEBUG="+godebug+xconnect.Setting)
	}
	s.cmd.Stderr = &s.stderr
	var err error
	if s.stdin, err = s.cmd.StdinPipe(); err != nil {
		return nil, err
	}
	stdout, err := s.cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := s.cmd.Start(); err != nil {
		return nil, err
	}
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if addrs, ok := strings.CutPrefix(strings.TrimSpace(line), "LISTEN "); ok && err == nil {
		if s.addr, s.ctl, ok = strings.Cut(addrs, " "); ok {
			return s, nil
		}
	}
	s.stop()
	return nil, fmt.Errorf("benchserver %s did not start: %v %q %s", candidate, err, line, s.stderr.String())
}

// stop closes the server's stdin (it exits) and kills it if it lingers.
func (s *server) stop() {
	_ = s.stdin.Close()
	done := make(chan struct{})
	go func() { // owned by stop, which waits for it
		_ = s.cmd.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = s.cmd.Process.Kill()
		<-done
	}
}

// runClient runs benchclient against a fresh server for candidate and
// decodes its JSON result into res.
func (h *harness) runClient(candidate string, keepAlive time.Duration, res any, args ...string) error {
	return h.runClientPad(candidate, keepAlive, 0, res, args...)
}

// runClientPad is runClient with the candidate under pad extra stack
// frames (bench.Pad).
func (h *harness) runClientPad(candidate string, keepAlive time.Duration, pad int, res any, args ...string) error {
	return h.runClientWith(serverOpts{candidate: candidate, keepAlive: keepAlive, pad: pad}, res, args...)
}

// runClientWith runs benchclient with args against a fresh server started
// with o and decodes its JSON result into res.
func (h *harness) runClientWith(o serverOpts, res any, args ...string) error {
	candidate := o.candidate
	s, err := h.startServer(o)
	if err != nil {
		return err
	}
	defer s.stop()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	args = append([]string{"-addr", s.addr, "-ctl", s.ctl, "-sources", fmt.Sprint(h.plan.sources)}, args...)
	cmd := exec.CommandContext(ctx, h.clientBn, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("benchclient %s %v: %w\n%s\nserver: %s", candidate, args, err, stderr.String(), s.stderr.String())
	}
	return json.Unmarshal(stdout.Bytes(), res)
}

// rounds runs fn for every candidate in every round, rotating the order.
func rounds[T any](n int, candidates []string, fn func(c string) (T, error)) (map[string][]T, error) {
	out := make(map[string][]T)
	for round := range n {
		for k := range candidates {
			c := candidates[(k+round)%len(candidates)]
			r, err := fn(c)
			if err != nil {
				return nil, err
			}
			out[c] = append(out[c], r)
		}
	}
	return out, nil
}

var (
	connectCandidates = []string{bench.Coder, bench.ChiCoder, bench.Chiws, bench.Gorilla}
	echoCandidates    = []string{bench.Coder, bench.ChiCoder, bench.Chiws, bench.Gorilla}
	idleCandidates    = []string{bench.Coder, bench.CoderPing, bench.ChiCoder, bench.Chiws, bench.Gorilla, bench.GorillaPing}
)

func (h *harness) connect() (map[string][]bench.ConnectResult, error) {
	p := h.plan
	return rounds(p.rounds, connectCandidates, func(c string) (bench.ConnectResult, error) {
		var r bench.ConnectResult
		err := h.runClient(c, 0, &r, "-mode", "connect",
			"-workers", fmt.Sprint(p.connectWorkers), "-duration", p.connectFor.String())
		return r, err
	})
}

func (h *harness) echo(size int) (map[string][]bench.EchoResult, error) {
	p := h.plan
	return rounds(p.rounds, echoCandidates, func(c string) (bench.EchoResult, error) {
		var r bench.EchoResult
		err := h.runClient(c, h.keepAliveFor(c), &r, "-mode", "echo", "-conns", fmt.Sprint(p.echoConns),
			"-size", fmt.Sprint(size), "-warmup", p.echoWarmup.String(), "-window", p.echoWindow.String())
		return r, err
	})
}

// keepAliveFor is the keep-alive a candidate runs with in the echo and idle
// sections: chiws, coder-ping and gorilla-ping ping every plan.keepAlive
// (1 s), the others never (-1 disables). armed describes it for the report.
func (h *harness) keepAliveFor(c string) time.Duration { return keepAliveFor(h.plan, c) }

func keepAliveFor(p plan, c string) time.Duration {
	switch c {
	case bench.Chiws, bench.CoderPing, bench.GorillaPing:
		return p.keepAlive
	}
	return -1
}

// armed says in words what keep-alive candidate c has armed at interval
// ka (as passed to benchserver -keepalive).
func armed(c string, ka time.Duration) string {
	if ka < 0 {
		return "none"
	}
	if ka == 0 {
		ka = chiws.DefaultKeepAliveInterval
	}
	switch c {
	case bench.Chiws:
		return fmt.Sprintf("every %v: a runtime timer per socket, Ping only on quiet sockets", ka)
	case bench.CoderPing:
		return fmt.Sprintf("every %v: a goroutine per socket, ticker + Ping", ka)
	case bench.GorillaPing:
		return fmt.Sprintf("every %v: a goroutine per socket, ticker + WriteControl(ping)", ka)
	}
	return "none"
}

func (h *harness) idle() (map[string][]bench.IdleResult, error) {
	p := h.plan
	runs := map[string]int{}
	return rounds(p.idleRounds, idleCandidates, func(c string) (bench.IdleResult, error) {
		var r bench.IdleResult
		args := []string{"-mode", "idle", "-conns", fmt.Sprint(p.idleConns),
			"-settle", p.idleSettle.String(), "-window", p.idleWindow.String()}
		if h.profileDir != "" && h.keepAliveFor(c) > 0 {
			runs[c]++
			args = append(args, "-cpuprofile", filepath.Join(h.profileDir, fmt.Sprintf("%s-idle-%d.pprof", c, runs[c])))
		}
		err := h.runClient(c, h.keepAliveFor(c), &r, args...)
		return r, err
	})
}

// headroomCandidates and headroomPads: the idle stack per connection
// under a growing stand-in for the application's middleware.
var (
	headroomCandidates = []string{bench.Coder, bench.ChiCoder, bench.Chiws}
	headroomPads       = []int{0, 2, 8, 16}
)

// headroom measures stack per idle connection for each candidate under
// each pad depth (one run each: stack sizes are powers of two, not noisy).
func (h *harness) headroom() (map[string]map[int]bench.IdleResult, error) {
	p := h.plan
	out := map[string]map[int]bench.IdleResult{}
	for _, c := range headroomCandidates {
		out[c] = map[int]bench.IdleResult{}
		for _, pad := range headroomPads {
			var r bench.IdleResult
			ka := time.Duration(-1)
			if c == bench.Chiws {
				ka = 0 // the default, 2 minutes: armed, never fires here
			}
			err := h.runClientPad(c, ka, pad, &r, "-mode", "idle", "-conns", fmt.Sprint(p.headroomConns),
				"-settle", "0s", "-window", "100ms")
			if err != nil {
				return nil, err
			}
			out[c][pad] = r
		}
	}
	return out, nil
}

func (h *harness) churnRun() (*bench.ChurnResult, error) {
	p := h.plan
	var r bench.ChurnResult
	err := h.runClient(bench.Chiws, p.keepAlive, &r, "-mode", "churn",
		"-open", fmt.Sprint(p.churnOpen), "-cycles", fmt.Sprint(p.churnCycles), "-workers", "16")
	if err != nil {
		return nil, err
	}
	return &r, nil
}

// The HTTP/2 section's rows: chiws served by the same benchserver (-h2c,
// GODEBUG=http2xconnect=1), dialled over HTTP/1.1 or over h2c.
const (
	chiwsH1  = "chiws-h1"
	chiwsH2C = "chiws-h2c"
)

var (
	h2Candidates = []string{chiwsH1, chiwsH2C}
	h2Proto      = map[string]string{chiwsH1: bench.ProtoH1, chiwsH2C: bench.ProtoH2C}
)

// h2EchoSize is the message size of the HTTP/2 echo.
const h2EchoSize = 128

// h2Connect is section 3's loop for chiws over HTTP/1.1 and over h2c,
// the two alternating within each round.
func (h *harness) h2Connect() (map[string][]bench.ConnectResult, error) {
	p := h.plan
	return rounds(p.rounds, h2Candidates, func(c string) (bench.ConnectResult, error) {
		var r bench.ConnectResult
		err := h.runClientWith(serverOpts{candidate: bench.Chiws, h2c: true}, &r, "-proto", h2Proto[c], "-mode", "connect",
			"-workers", fmt.Sprint(p.connectWorkers), "-duration", p.connectFor.String())
		return r, err
	})
}

// h2Echo is section 4's 128 B echo for chiws over HTTP/1.1 and over h2c.
func (h *harness) h2Echo() (map[string][]bench.EchoResult, error) {
	p := h.plan
	return rounds(p.rounds, h2Candidates, func(c string) (bench.EchoResult, error) {
		var r bench.EchoResult
		err := h.runClientWith(serverOpts{candidate: bench.Chiws, keepAlive: h.keepAliveFor(bench.Chiws), h2c: true}, &r,
			"-proto", h2Proto[c], "-mode", "echo", "-conns", fmt.Sprint(p.echoConns), "-size", fmt.Sprint(h2EchoSize),
			"-warmup", p.echoWarmup.String(), "-window", p.echoWindow.String())
		return r, err
	})
}
