package main

import (
	"fmt"
	"os/exec"
	"strconv"
	"strings"
)

// profEntry is one function of `go tool pprof -top`.
type profEntry struct {
	name            string
	flat, cum       float64 // milliseconds of samples
	flatPct, cumPct float64
}

// cpuProfile is a profile's functions, by flat time.
type cpuProfile struct {
	total   float64 // milliseconds of samples
	entries []profEntry
}

// readProfile runs `go tool pprof -top` on file (the go command is there:
// the bench runs under go run or go test).
func readProfile(file string) (cpuProfile, error) {
	var p cpuProfile
	out, err := exec.Command("go", "tool", "pprof", "-top", "-unit=ms", "-nodecount=100000", file).Output()
	if err != nil {
		return p, fmt.Errorf("go tool pprof %s: %w", file, err)
	}
	table := false
	for line := range strings.Lines(string(out)) {
		f := strings.Fields(line)
		if !table {
			table = len(f) == 5 && f[0] == "flat" && f[4] == "cum%"
			if len(f) > 2 && f[0] == "Duration:" {
				// "Duration: 5s, Total samples = 4870ms (97.4%)"
				if i := strings.Index(line, "Total samples = "); i >= 0 {
					p.total = parseMs(strings.Fields(line[i+len("Total samples = "):])[0])
				}
			}
			continue
		}
		if len(f) < 6 {
			continue
		}
		e := profEntry{flat: parseMs(f[0]), flatPct: pct(f[1]), cum: parseMs(f[3]), cumPct: pct(f[4])}
		e.name = strings.TrimSuffix(strings.Join(f[5:], " "), " (inline)")
		p.entries = append(p.entries, e)
	}
	return p, nil
}

func parseMs(s string) float64 {
	s = strings.TrimSuffix(s, "ms")
	v, _ := strconv.ParseFloat(s, 64)
	return v
}

func pct(s string) float64 {
	v, _ := strconv.ParseFloat(strings.TrimSuffix(s, "%"), 64)
	return v
}

// Categories of flat time: every sample is in exactly one.
var categories = []struct {
	name string
	is   func(fn string) bool
}{
	{"system calls (socket reads and writes)", func(fn string) bool {
		return strings.HasPrefix(fn, "syscall.") || strings.HasPrefix(fn, "internal/runtime/syscall") ||
			strings.HasPrefix(fn, "runtime/internal/syscall") || strings.HasPrefix(fn, "internal/poll.")
	}},
	{"garbage collection", func(fn string) bool {
		for _, p := range []string{"runtime.gc", "runtime.scan", "runtime.mark", "runtime.greyobject", "runtime.findObject",
			"runtime.(*gcWork)", "runtime.(*gcBits)", "runtime.wbBuf", "runtime.bulkBarrier", "runtime.sweep", "runtime.(*sweepLocked)",
			"runtime.(*mspan).sweep", "runtime.typePointers", "runtime.(*mspan).typePointers", "runtime.spanOf", "runtime.pageIndexOf",
			"runtime.(*gcControllerState)", "runtime.(*gcCPULimiterState)", "runtime.(*mheap)", "runtime.(*pageAlloc)"} {
			if strings.HasPrefix(fn, p) {
				return true
			}
		}
		return false
	}},
	{"allocation", func(fn string) bool {
		for _, p := range []string{"runtime.malloc", "runtime.(*mcache)", "runtime.(*mcentral)", "runtime.newobject",
			"runtime.makeslice", "runtime.growslice", "runtime.memclr", "runtime.nextFreeFast", "runtime.heapSetType",
			"runtime.(*mspan)", "runtime.publicationBarrier", "runtime.newarray", "runtime.rawstring", "runtime.concatstring"} {
			if strings.HasPrefix(fn, p) {
				return true
			}
		}
		return false
	}},
	{"scheduler, timers, locks and network poller (the rest of the runtime)", func(fn string) bool {
		return strings.HasPrefix(fn, "runtime.") || strings.HasPrefix(fn, "internal/runtime/") || strings.HasPrefix(fn, "sync.") ||
			strings.HasPrefix(fn, "sync/atomic.") ||
			strings.HasPrefix(fn, "internal/sync.") || strings.HasPrefix(fn, "time.") || strings.HasPrefix(fn, "context.")
	}},
	{"coder/websocket and the standard library below it", func(fn string) bool {
		return strings.HasPrefix(fn, "github.com/coder/websocket") || strings.HasPrefix(fn, "bufio.") ||
			strings.HasPrefix(fn, "net.") || strings.HasPrefix(fn, "encoding/binary") || strings.HasPrefix(fn, "crypto/")
	}},
	{"chiws", func(fn string) bool {
		return strings.HasPrefix(fn, "github.com/chiws/chiws.") || strings.HasPrefix(fn, "github.com/chiws/chiws/internal")
	}},
	{"broadcast (hub and broker adapters)", func(fn string) bool {
		return strings.HasPrefix(fn, "github.com/chiws/chiws/broadcast")
	}},
	{"NATS and Redis clients and servers", func(fn string) bool {
		return strings.HasPrefix(fn, "github.com/nats-io") || strings.HasPrefix(fn, "github.com/redis")
	}},
	{"the bench and anything else", func(string) bool { return true }},
}

// byCategory returns the milliseconds of each category, in the order of
// categories.
func (p cpuProfile) byCategory() []float64 {
	out := make([]float64, len(categories))
	for _, e := range p.entries {
		for i, c := range categories {
			if c.is(e.name) {
				out[i] += e.flat
				break
			}
		}
	}
	return out
}
