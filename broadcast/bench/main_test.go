package main

import (
	"bytes"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	if isClientProcess() { // the bench runs its binary again for the clients
		clientMain()
		return
	}
	goleak.VerifyTestMain(m)
}

// TestSmoke runs the benchmark small, on Memory and embedded NATS, with
// the clients in their own process as in a full run, and checks that the
// report says every message arrived.
func TestSmoke(t *testing.T) {
	cfg := defaultConfig()
	cfg.large, cfg.small, cfg.largeRate, cfg.smallRate, cfg.lightRate = 12, 6, 20, 40, 20
	cfg.topics, cfg.dur, cfg.cost = []int{3}, 200*time.Millisecond, 300
	cfg.churnWorkers, cfg.churnHold, cfg.quiet = 2, 20*time.Millisecond, 0
	cfg.brokers = cfg.brokers[:2]
	cfg.parts = map[string]bool{"fleet": true, "churn": true, "topics": true, "cost": true}
	cfg.profileDir = t.TempDir()
	var buf bytes.Buffer
	if err := run(&buf, cfg); err != nil {
		t.Fatal(err)
	}
	out := buf.String()
	if strings.Contains(out, "not run") {
		t.Fatalf("report shows a failure:\n%s", out)
	}
	// Tiny sizes say nothing about latency or CPU, but every message must
	// arrive: no row may report a gap, and the joins-and-leaves goals
	// (no stable member dropped) must be met.
	gaps := regexp.MustCompile(`gaps [1-9]|[1-9][0-9]* gaps`)
	for _, line := range strings.Split(out, "\n") {
		if gaps.MatchString(line) {
			t.Errorf("gaps: %s", line)
		}
		if strings.HasPrefix(line, "| Joins and leaves") && !strings.HasSuffix(line, "| met |") {
			t.Errorf("members dropped: %s", line)
		}
	}
	for _, want := range []string{"### Goals", "### Fleet sizes", "### Topic counts", "### Joins and leaves", "### Broker cost"} {
		if !strings.Contains(out, want) {
			t.Errorf("report lacks %q:\n%s", want, out)
		}
	}
	file := filepath.Join(t.TempDir(), "benchmarks.md")
	if err := os.WriteFile(file, []byte("# Benchmarks\n\nkept\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for range 2 { // the second run replaces the first section
		if err := splice(file, out); err != nil {
			t.Fatal(err)
		}
	}
	got, _ := os.ReadFile(file)
	if !strings.HasPrefix(string(got), "# Benchmarks\n\nkept\n") || strings.Count(string(got), beginMarker) != 1 {
		t.Fatalf("splice result:\n%s", got)
	}
}
