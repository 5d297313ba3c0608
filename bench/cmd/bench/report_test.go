package main

import (
	"math"
	"testing"
)

// TestSpread checks the per-round statistics of the report: ratios and
// differences pair round i with round i, and the quartiles interpolate.
func TestSpread(t *testing.T) {
	a := []float64{10, 20, 30, 40}
	b := []float64{10, 10, 0, 20}
	if got := ratios(a, b); len(got) != 3 || got[0] != 1 || got[1] != 2 || got[2] != 2 {
		t.Fatalf("ratios = %v, want [1 2 2] (the round with b = 0 left out)", got)
	}
	if got := diffs(a, b[:3]); len(got) != 3 || got[2] != 30 {
		t.Fatalf("diffs = %v", got)
	}
	v := []float64{4, 1, 3, 2}
	for _, c := range []struct{ q, want float64 }{{0, 1}, {0.25, 1.75}, {0.5, 2.5}, {0.75, 3.25}, {1, 4}} {
		if got := quantile(v, c.q); math.Abs(got-c.want) > 1e-9 {
			t.Errorf("quantile(%v, %v) = %v, want %v", v, c.q, got, c.want)
		}
	}
	if got, want := spread(v, "%.2f"), "2.50 (per round 1.00 to 4.00, IQR 1.75 to 3.25, n=4)"; got != want {
		t.Errorf("spread = %q, want %q", got, want)
	}
	if got, want := span(v, "%.1f"), "1.0 to 4.0"; got != want {
		t.Errorf("span = %q, want %q", got, want)
	}
}
