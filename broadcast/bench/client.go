package main

// The clients run in a separate process: 10,000 sockets need 10,000 file
// descriptors on each side, and the machine allows 20,000 per process. The
// bench runs its own binary again with clientEnv set (as
// internal/xconnect.Reexec does for GODEBUG), and drives it with one
// command per line on the child's stdin; every command gets one line back
// on its stdout. The same child serves every row of a run, and a smoke
// test's binary is re-run the same way (see TestMain).

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/coder/websocket"
)

// clientEnv, set in the environment, makes the binary the client process.
const clientEnv = "CHIWS_BROADCAST_BENCH_CLIENT"

// Payload layout of a measured message; anything shorter is a probe.
const (
	offPhase = 0  // byte: the phase it belongs to
	offTopic = 1  // uint32: topic index
	offSeq   = 5  // uint64: sequence number within its topic and phase
	offTime  = 13 // int64: Unix nanoseconds when the publisher sent it
	minSize  = 21
)

// isClientProcess reports whether this process was started as the client.
func isClientProcess() bool { return os.Getenv(clientEnv) == "1" }

// ---- the parent's side ----

// clients is the client process, seen from the bench.
type clients struct {
	cmd *exec.Cmd
	in  io.WriteCloser
	out *bufio.Reader
	mu  sync.Mutex // one command at a time
}

// startClients runs this binary again as the client process.
func startClients() (*clients, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), clientEnv+"=1")
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	return &clients{cmd: cmd, in: in, out: bufio.NewReaderSize(out, 1<<16)}, nil
}

// do sends one command and returns its answer; an answer starting with
// "err " is an error.
func (c *clients) do(format string, args ...any) (string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, err := fmt.Fprintf(c.in, format+"\n", args...); err != nil {
		return "", fmt.Errorf("client process: %w", err)
	}
	line, err := c.out.ReadString('\n')
	if err != nil {
		return "", fmt.Errorf("client process: %w", err)
	}
	line = strings.TrimSuffix(line, "\n")
	if msg, ok := strings.CutPrefix(line, "err "); ok {
		return "", errors.New("client process: " + msg)
	}
	return line, nil
}

func (c *clients) int(cmd string) (int64, error) {
	s, err := c.do("%s", cmd)
	if err != nil {
		return 0, err
	}
	return strconv.ParseInt(s, 10, 64)
}

// cpu returns the client process's CPU time so far.
func (c *clients) cpu() (time.Duration, error) {
	n, err := c.int("cpu")
	return time.Duration(n), err
}

func (c *clients) report(published int) (phaseReport, error) {
	var r phaseReport
	s, err := c.do("report %d", published)
	if err != nil {
		return r, err
	}
	return r, json.Unmarshal([]byte(s), &r)
}

// stop ends the client process: EOF on its stdin closes its sockets.
func (c *clients) stop() {
	_ = c.in.Close()
	done := make(chan error, 1)
	go func() { done <- c.cmd.Wait() }() // owned by stop: ends with the process, killed below if late
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		_ = c.cmd.Process.Kill()
		<-done
	}
}

// phaseReport is what the stable sockets saw in one phase.
type phaseReport struct {
	Sockets  int   `json:"sockets"`
	Received int64 `json:"received"`
	Expected int64 `json:"expected"`
	Short    int   `json:"short"` // sockets that received fewer than expected
	Gaps     int64 `json:"gaps"`  // sequence numbers skipped or out of order
	Stale    int64 `json:"stale"` // messages of another phase
	P50      int64 `json:"p50"`
	P99      int64 `json:"p99"`
	Max      int64 `json:"max"`
}

// churnReport is what the churning sockets did.
type churnReport struct {
	Cycles int64 `json:"cycles"` // joins and leaves (a socket dialled, joined, closed)
	Subs   int64 `json:"subs"`   // Subscribe and Unsubscribe requests sent
	Errors int64 `json:"errors"`
}

// ---- the client process ----

type sock struct {
	c     *websocket.Conn
	topic int

	mu     sync.Mutex // the reader against reset and report
	phase  byte
	probes int
	n      int64
	last   int64
	gaps   int64
	stale  int64
	lat    []int64
}

type clientProc struct {
	http   []*http.Client // one per source address
	socks  []*sock
	topics int
	total  atomic.Int64 // measured messages since the last reset
	probed atomic.Int64 // sockets with a probe since the last reset
	probes atomic.Int64 // probes received since the last reset
	wg     sync.WaitGroup

	churnWG   sync.WaitGroup
	churnStop context.CancelFunc
	churn     churnReport
	churnMu   sync.Mutex
}

// clientMain runs the client process until its stdin ends.
func clientMain() {
	p := &clientProc{}
	for i := range 8 { // 127.0.0.2 to 127.0.0.9: ephemeral ports for every row's sockets
		d := &net.Dialer{Timeout: 10 * time.Second, LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(2+i))}}
		p.http = append(p.http, &http.Client{Transport: &http.Transport{DialContext: d.DialContext}})
	}
	in := bufio.NewScanner(os.Stdin)
	out := bufio.NewWriter(os.Stdout)
	for in.Scan() {
		reply, err := p.command(strings.Fields(in.Text()))
		if err != nil {
			reply = "err " + strings.ReplaceAll(err.Error(), "\n", " ")
		}
		fmt.Fprintln(out, reply)
		_ = out.Flush()
	}
	p.stopChurn()
	p.closeAll()
}

func (p *clientProc) command(f []string) (string, error) {
	if len(f) == 0 {
		return "", errors.New("empty command")
	}
	arg := func(i int) int {
		if i >= len(f) {
			return 0
		}
		n, _ := strconv.Atoi(f[i])
		return n
	}
	switch f[0] {
	case "dial": // dial N TOPICS URL,URL,...
		if len(f) != 4 {
			return "", errors.New("usage: dial N TOPICS URLS")
		}
		return "ok", p.dial(arg(1), arg(2), strings.Split(f[3], ","))
	case "cpu":
		return strconv.FormatInt(int64(cpuTime()), 10), nil
	case "count":
		return strconv.FormatInt(p.total.Load(), 10), nil
	case "probed":
		return strconv.FormatInt(p.probed.Load(), 10), nil
	case "probes":
		return strconv.FormatInt(p.probes.Load(), 10), nil
	case "reset": // reset PHASE
		p.reset(byte(arg(1)))
		return "ok", nil
	case "report": // report PUBLISHED
		b, err := json.Marshal(p.report(arg(1)))
		return string(b), err
	case "churn": // churn MILLIS WORKERS HOLDMILLIS URL,URL,...
		if len(f) != 5 {
			return "", errors.New("usage: churn MILLIS WORKERS HOLDMILLIS URLS")
		}
		p.startChurn(time.Duration(arg(1))*time.Millisecond, arg(2), time.Duration(arg(3))*time.Millisecond, strings.Split(f[4], ","))
		return "ok", nil
	case "churnwait":
		p.churnWG.Wait()
		p.churnMu.Lock()
		b, err := json.Marshal(p.churn)
		p.churn = churnReport{}
		p.churnMu.Unlock()
		return string(b), err
	case "close":
		p.closeAll()
		return "ok", nil
	}
	return "", fmt.Errorf("unknown command %q", f[0])
}

func (p *clientProc) dialOne(ctx context.Context, i int, url string) (*websocket.Conn, error) {
	c, _, err := websocket.Dial(ctx, url, &websocket.DialOptions{HTTPClient: p.http[i%len(p.http)]})
	if err != nil {
		return nil, err
	}
	c.SetReadLimit(1 << 20)
	return c, nil
}

// dial opens n stable sockets, socket i to urls[i%len(urls)] on topic
// i%topics, and starts their readers.
func (p *clientProc) dial(n, topics int, urls []string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	p.topics = max(topics, 1)
	socks := make([]*sock, n)
	var next atomic.Int64
	var firstErr error
	var errMu sync.Mutex
	var wg sync.WaitGroup
	for range 32 {
		wg.Add(1)
		go func() { // owned by dial: waited for below
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				u := fmt.Sprintf("%s/?i=%d&t=%d", urls[i%len(urls)], i, i%p.topics)
				c, err := p.dialOne(ctx, i, u)
				if err != nil {
					errMu.Lock()
					if firstErr == nil {
						firstErr = fmt.Errorf("dial %d: %w", i, err)
					}
					errMu.Unlock()
					cancel()
					return
				}
				socks[i] = &sock{c: c, topic: i % p.topics, last: -1}
			}
		}()
	}
	wg.Wait()
	for _, s := range socks {
		if s == nil {
			continue
		}
		p.socks = append(p.socks, s)
		p.wg.Add(1)
		go p.read(s) // owned by the client process: ends when the socket closes; closeAll waits
	}
	if firstErr != nil {
		p.closeAll()
	}
	return firstErr
}

func (p *clientProc) read(s *sock) {
	defer p.wg.Done()
	for {
		_, b, err := s.c.Read(context.Background())
		if err != nil {
			return
		}
		now := time.Now().UnixNano()
		s.mu.Lock()
		if len(b) < minSize {
			if s.probes == 0 {
				p.probed.Add(1)
			}
			s.probes++
			p.probes.Add(1)
			s.mu.Unlock()
			continue
		}
		if b[offPhase] != s.phase {
			s.stale++
			s.mu.Unlock()
			continue
		}
		seq := int64(binary.BigEndian.Uint64(b[offSeq:]))
		if seq != s.last+1 {
			s.gaps++
		}
		s.last = seq
		s.n++
		s.lat = append(s.lat, now-int64(binary.BigEndian.Uint64(b[offTime:])))
		s.mu.Unlock()
		p.total.Add(1)
	}
}

func (p *clientProc) reset(phase byte) {
	for _, s := range p.socks {
		s.mu.Lock()
		s.phase, s.probes, s.n, s.last, s.gaps, s.stale = phase, 0, 0, -1, 0, 0
		s.lat = s.lat[:0]
		s.mu.Unlock()
	}
	p.total.Store(0)
	p.probed.Store(0)
	p.probes.Store(0)
}

// report sums the stable sockets' figures; published messages went to the
// topics in turn (message i to topic i%topics).
func (p *clientProc) report(published int) phaseReport {
	r := phaseReport{Sockets: len(p.socks)}
	var lat []int64
	for _, s := range p.socks {
		want := int64(published / p.topics)
		if s.topic < published%p.topics {
			want++
		}
		s.mu.Lock()
		r.Received += s.n
		r.Expected += want
		if s.n < want {
			r.Short++
		}
		r.Gaps += s.gaps
		r.Stale += s.stale
		lat = append(lat, s.lat...)
		s.mu.Unlock()
	}
	if len(lat) > 0 {
		slices.Sort(lat)
		q := func(f float64) int64 { return lat[int(f*float64(len(lat)-1))] }
		r.P50, r.P99, r.Max = q(0.50), q(0.99), lat[len(lat)-1]
	}
	return r
}

func (p *clientProc) closeAll() {
	for _, s := range p.socks {
		_ = s.c.CloseNow()
	}
	p.wg.Wait()
	p.socks = nil
	p.total.Store(0)
	p.probed.Store(0)
}

// startChurn runs workers that each, until d has passed, dial a socket
// that joins a topic (alternately one of the stable members' topics and a
// topic of its own that nobody publishes to), subscribe it to another
// topic and unsubscribe it again by messages to the server, hold it for
// hold, and close it.
func (p *clientProc) startChurn(d time.Duration, workers int, hold time.Duration, urls []string) {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	p.churnStop = cancel
	for w := range workers {
		p.churnWG.Add(1)
		go p.churner(ctx, w, hold, urls) // owned by the client process: ends with ctx; churnwait and stopChurn wait
	}
}

func (p *clientProc) stopChurn() {
	if p.churnStop != nil {
		p.churnStop()
	}
	p.churnWG.Wait()
}

func (p *clientProc) churner(ctx context.Context, w int, hold time.Duration, urls []string) {
	defer p.churnWG.Done()
	var st churnReport
	defer func() {
		p.churnMu.Lock()
		p.churn.Cycles += st.Cycles
		p.churn.Subs += st.Subs
		p.churn.Errors += st.Errors
		p.churnMu.Unlock()
	}()
	for cycle := 0; ctx.Err() == nil; cycle++ {
		topic := fmt.Sprintf("t.%d", (w+cycle)%p.topics) // a stable members' topic
		other := fmt.Sprintf("x.%d", w)                  // nobody publishes there
		if cycle%2 == 1 {
			topic, other = other, topic
		}
		dctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		c, err := p.dialOne(dctx, w, fmt.Sprintf("%s/?churn=%s", urls[(w+cycle)%len(urls)], topic))
		cancel()
		if err != nil {
			st.Errors++
			continue
		}
		var rd sync.WaitGroup
		rd.Add(1)
		go func() { // owned by this cycle: ends when c closes; waited for below
			defer rd.Done()
			for {
				if _, _, err := c.Read(context.Background()); err != nil {
					return
				}
			}
		}()
		for _, m := range []string{"s " + other, "u " + other} {
			wctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			if err := c.Write(wctx, websocket.MessageText, []byte(m)); err != nil {
				st.Errors++
			} else {
				st.Subs++
			}
			cancel()
			select {
			case <-ctx.Done():
			case <-time.After(hold / 2):
			}
		}
		if err := c.Close(websocket.StatusNormalClosure, ""); err != nil {
			_ = c.CloseNow()
		}
		rd.Wait()
		st.Cycles++
	}
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
