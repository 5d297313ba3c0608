package bench

import (
	"testing"

	"github.com/chiws/chiws/internal/xconnect"
	"go.uber.org/goleak"
)

// TestMain runs the tests with GODEBUG=http2xconnect=1 (net/http reads it
// only when the process starts), which TestH2CClient's server needs.
func TestMain(m *testing.M) {
	xconnect.Reexec()
	goleak.VerifyTestMain(m)
}

// BenchmarkPassThrough compares an ordinary request through the chiws
// middleware with the bare handler, with and without a chi router.
func BenchmarkPassThrough(b *testing.B) {
	for _, h := range PassThroughHandlers() {
		b.Run(h.Name, func(b *testing.B) { BenchPassThrough(b, h.Handler) })
	}
}

// BenchmarkUpgrade compares the upgrade path of each candidate on the same
// fake hijackable connection.
func BenchmarkUpgrade(b *testing.B) {
	for _, h := range UpgradeHandlers() {
		b.Run(h.Name, func(b *testing.B) { BenchUpgrade(b, h.Handler) })
	}
}

// TestUpgradeHandlers checks that every upgrade candidate really upgrades
// on the fake connection, so the benchmark measures a successful accept.
func TestUpgradeHandlers(t *testing.T) {
	for _, h := range UpgradeHandlers() {
		t.Run(h.Name, func(t *testing.T) {
			w := NewHijackWriter()
			h.Handler.ServeHTTP(w, UpgradeRequest())
			if !w.Upgraded() {
				t.Fatalf("status %d, hijacked %v", w.Status(), w.Hijacked())
			}
		})
	}
}

// TestPassThroughHandlers checks that every pass-through candidate reaches
// the bare handler.
func TestPassThroughHandlers(t *testing.T) {
	for _, h := range PassThroughHandlers() {
		t.Run(h.Name, func(t *testing.T) {
			res := testing.Benchmark(func(b *testing.B) { BenchPassThrough(b, h.Handler) })
			if res.N == 0 {
				t.Fatal("benchmark did not run")
			}
		})
	}
}

// BenchmarkSyscallFloor: the system calls of one keep-alive ping's write
// and its pong's read, without WebSocket or scheduling (see
// BenchSyscallFloor).
func BenchmarkSyscallFloor(b *testing.B) { BenchSyscallFloor(b) }
