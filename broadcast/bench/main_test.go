package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestSmoke runs the benchmark small, on Memory and embedded NATS, and
// checks that the report says every message arrived in order.
func TestSmoke(t *testing.T) {
	cfg := config{clients: 12, burst: 40, window: 8, rate: 50, paced: 200 * time.Millisecond, size: 128, cost: 500}
	var buf bytes.Buffer
	if err := run(&buf, cfg, allBuses[:2]); err != nil {
		t.Fatal(err)
	}
	out := buf.String()
	if strings.Contains(out, "not run") || strings.Contains(out, "**no**") {
		t.Fatalf("report shows a failure:\n%s", out)
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
