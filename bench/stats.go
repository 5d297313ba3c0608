package bench

import (
	"encoding/json"
	"net/http"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
)

// PathStats is the server's control endpoint: GET PathStats returns
// ServerStats as JSON; ?gc=1 collects garbage first, so that HeapLive is
// the live heap.
const PathStats = "/_stats"

// ServerStats is a snapshot of the server process.
type ServerStats struct {
	Candidate  string  `json:"candidate"`
	Goroutines int     `json:"goroutines"`
	HeapLive   uint64  `json:"heapLive"`   // bytes of heap objects (live after ?gc=1)
	StackInuse uint64  `json:"stackInuse"` // bytes of goroutine stacks
	RSS        uint64  `json:"rss"`        // resident set size, bytes
	CPU        float64 `json:"cpu"`        // user+system CPU seconds since start
	PingsSent  uint64  `json:"pingsSent"`
	Active     int64   `json:"active"` // open sockets
}

var (
	msMu sync.Mutex
	ms   runtime.MemStats
)

// CollectStats snapshots the current process; gc runs two collections
// first.
func CollectStats(s *Server, gc bool) ServerStats {
	if gc {
		runtime.GC()
		runtime.GC()
	}
	// runtime.MemStats is 5 KiB: keep it off this goroutine's stack.
	msMu.Lock()
	runtime.ReadMemStats(&ms)
	heap, stacks := ms.HeapAlloc, ms.StackInuse
	msMu.Unlock()
	st := ServerStats{
		Candidate:  s.cfg.Candidate,
		Goroutines: runtime.NumGoroutine(),
		HeapLive:   heap,
		StackInuse: stacks,
		RSS:        rss(),
		CPU:        cpuSeconds(),
		PingsSent:  s.PingsSent(),
		Active:     s.Active(),
	}
	return st
}

// StatsHandler serves CollectStats at PathStats. It runs on its own
// listener, so that the WebSocket path is exactly the candidate's handler
// (the stack depth under a parked socket matters: see docs/benchmarks.md).
func StatsHandler(s *Server) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != PathStats {
			http.NotFound(w, r)
			return
		}
		st := CollectStats(s, r.URL.Query().Get("gc") == "1")
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(st)
	})
}

func cpuSeconds() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	tv := func(t syscall.Timeval) float64 { return float64(t.Sec) + float64(t.Usec)/1e6 }
	return tv(ru.Utime) + tv(ru.Stime)
}

// rss reads the resident set size from /proc (Linux); 0 elsewhere.
func rss() uint64 {
	b, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) < 2 {
		return 0
	}
	pages, _ := strconv.ParseUint(f[1], 10, 64)
	return pages * uint64(os.Getpagesize())
}
