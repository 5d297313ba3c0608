// Package soak holds the chiws soak test. It is skipped unless CHIWS_SOAK=1:
//
//	CHIWS_SOAK=1 go test -run TestSoak -v -timeout 10m ./soak \
//	    -soak.conns=10000 -soak.duration=60s
//
// The clients run in a separate process (./client, built by the test).
package soak

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/chiws/chiws"
	"github.com/coder/websocket"
	"github.com/go-chi/chi/v5"
	"go.uber.org/goleak"
)

var (
	conns    = flag.Int("soak.conns", envInt("CHIWS_SOAK_CONNS", 10000), "concurrent sockets (env CHIWS_SOAK_CONNS)")
	duration = flag.Duration("soak.duration", envDuration("CHIWS_SOAK_DURATION", 60*time.Second), "message exchange time once all sockets are open (env CHIWS_SOAK_DURATION)")
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func envInt(name string, def int) int {
	if n, err := strconv.Atoi(os.Getenv(name)); err == nil {
		return n
	}
	return def
}

func envDuration(name string, def time.Duration) time.Duration {
	if d, err := time.ParseDuration(os.Getenv(name)); err == nil {
		return d
	}
	return def
}

// result mirrors the client's summary line.
type result struct {
	Connected        int64 `json:"connected"`
	DialErrors       int64 `json:"dialErrors"`
	Sent             int64 `json:"sent"`
	Received         int64 `json:"received"`
	Lost             int64 `json:"lost"`
	OutOfOrder       int64 `json:"outOfOrder"`
	UnexpectedCloses int64 `json:"unexpectedCloses"`
	CloseErrors      int64 `json:"closeErrors"`
}

type memSnap struct {
	goroutines int
	heap       uint64
}

func snapshot() memSnap {
	runtime.GC()
	runtime.GC() // a second cycle empties sync.Pools
	debug.FreeOSMemory()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return memSnap{runtime.NumGoroutine(), ms.HeapAlloc}
}

// TestSoak holds -soak.conns sockets for -soak.duration with a ping every
// second, each echoing a sequence-numbered message every second: zero
// unexpected closes, zero lost or reordered messages, and goroutines and
// heap back to their baseline afterwards.
func TestSoak(t *testing.T) {
	if os.Getenv("CHIWS_SOAK") != "1" {
		t.Skip("set CHIWS_SOAK=1 to run the soak test")
	}
	n, d := *conns, *duration
	raiseFileLimit(t)

	bin := filepath.Join(t.TempDir(), "client")
	build := exec.Command("go", "build", "-o", bin, "./client")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build ./client: %v\n%s", err, out)
	}

	var (
		handlers, returned, normal, unexpected, seqErrors, echoed atomic.Int64
	)
	ws := chiws.New(chiws.Options{
		KeepAliveInterval: time.Second,
		KeepAliveTimeout:  15 * time.Second, // a loaded 2-core machine
	})
	r := chi.NewRouter()
	r.Use(ws.Handler)
	r.Get("/echo", func(w http.ResponseWriter, r *http.Request) {
		handlers.Add(1)
		defer returned.Add(1)
		c, err := chiws.Accept(w, r, nil)
		if err != nil {
			return
		}
		ctx := c.Context()
		want := int64(0)
		for {
			typ, p, err := c.Read(ctx)
			if err != nil {
				if websocket.CloseStatus(err) == websocket.StatusNormalClosure {
					normal.Add(1)
				} else {
					unexpected.Add(1)
					t.Logf("server: unexpected end of socket: %v", err)
				}
				return
			}
			_, seq, _ := strings.Cut(string(p), ":")
			if seq != strconv.FormatInt(want, 10) {
				seqErrors.Add(1)
			}
			want++
			if err := c.Write(ctx, typ, p); err != nil {
				unexpected.Add(1)
				t.Logf("server: write: %v", err)
				return
			}
			echoed.Add(1)
		}
	})
	srv := httptest.NewServer(r)
	defer srv.Close()
	base := snapshot()

	ctx, cancel := context.WithTimeout(context.Background(), d+5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin,
		"-url", "ws"+strings.TrimPrefix(srv.URL, "http")+"/echo",
		"-n", strconv.Itoa(n), "-duration", d.String())
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var res result
	var peak memSnap
	var peakActive int
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "READY "):
			t.Logf("%s sockets open after %v", strings.TrimPrefix(line, "READY "), time.Since(start).Round(time.Millisecond))
			// The client sees its 101 just before the server registers
			// the socket: poll briefly.
			for wait := time.Now().Add(30 * time.Second); ws.Stats().Active < n && time.Now().Before(wait); {
				time.Sleep(10 * time.Millisecond)
			}
			peakActive = ws.Stats().Active
			peak = snapshot()
		case strings.HasPrefix(line, "RESULT "):
			if err := json.Unmarshal([]byte(strings.TrimPrefix(line, "RESULT ")), &res); err != nil {
				t.Fatalf("client result %q: %v", line, err)
			}
		}
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("client: %v", err)
	}

	deadline := time.Now().Add(time.Minute)
	for returned.Load() != handlers.Load() || ws.Stats().Active != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d handlers returned, %d sockets active", returned.Load(), handlers.Load(), ws.Stats().Active)
		}
		time.Sleep(10 * time.Millisecond) // polling a counter with a deadline
	}
	st := ws.Stats()
	sctx, scancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer scancel()
	if err := ws.Shutdown(sctx); err != nil {
		t.Errorf("Shutdown: %v", err)
	}
	srv.Close()
	var after memSnap
	deadline = time.Now().Add(30 * time.Second)
	for {
		after = snapshot()
		if after.goroutines <= base.goroutines || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}

	if path := os.Getenv("CHIWS_SOAK_HEAPPROFILE"); path != "" {
		if f, err := os.Create(path); err == nil {
			_ = pprof.WriteHeapProfile(f)
			f.Close()
		}
	}
	t.Logf("soak: %d sockets for %v, total %v", n, d, time.Since(start).Round(time.Millisecond))
	t.Logf("client: %+v", res)
	t.Logf("server: active at peak %d, echoed %d, normal closes %d, unexpected %d, sequence errors %d",
		peakActive, echoed.Load(), normal.Load(), unexpected.Load(), seqErrors.Load())
	t.Logf("server: pings %d, keep-alive timeouts %d, early returns %d, panics %d",
		st.PingsSent, st.KeepAliveTimeouts, st.EarlyReturns, st.Panics)
	t.Logf("goroutines %d -> %d -> %d; heap %.1f -> %.1f -> %.1f MiB (baseline, all open, after close)",
		base.goroutines, peak.goroutines, after.goroutines, mib(base.heap), mib(peak.heap), mib(after.heap))

	var errs []error
	check := func(ok bool, msg string) {
		if !ok {
			errs = append(errs, errors.New(msg))
		}
	}
	check(res.Connected == int64(n) && res.DialErrors == 0, "not every socket connected")
	check(peakActive == n, "Stats().Active did not reach the socket count")
	check(res.UnexpectedCloses == 0 && unexpected.Load() == 0, "unexpected closes")
	check(res.Lost == 0 && res.OutOfOrder == 0 && seqErrors.Load() == 0, "lost or reordered messages")
	check(res.Sent > 0 && echoed.Load() == res.Sent, "server echoes differ from client sends")
	check(normal.Load() == int64(n), "not every socket closed with 1000")
	check(st.KeepAliveTimeouts == 0 && st.EarlyReturns == 0 && st.Panics == 0, "keep-alive timeouts, early returns or panics")
	// Busy sockets are not pinged: only those quiet in one direction for a
	// whole interval between two looks are, some hundreds in 20 s.
	check(st.PingsSent > 0, "keep-alive pings were not sent")
	check(after.goroutines <= base.goroutines, "goroutines not back to baseline")
	// The runtime keeps the descriptor of every goroutine that ever ran,
	// for reuse (runtime.malg in a heap profile: about 1 KiB each); the
	// rest must be gone.
	check(after.heap <= base.heap+uint64(n)<<10+8<<20, "heap not back to baseline")
	for _, err := range errs {
		t.Error(err)
	}
}

func mib(b uint64) float64 { return float64(b) / (1 << 20) }

// raiseFileLimit lifts the soft RLIMIT_NOFILE to the hard limit and skips
// the test when it cannot hold the sockets.
func raiseFileLimit(t *testing.T) {
	var l syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
		t.Fatal(err)
	}
	l.Cur = l.Max
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
		t.Fatal(err)
	}
	if need := uint64(*conns) + 100; l.Cur < need {
		t.Skipf("RLIMIT_NOFILE %d is below the %d sockets needed", l.Cur, need)
	}
}
