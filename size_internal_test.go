package chiws

import (
	"testing"
	"unsafe"
)

// TestSocketSizeClass keeps the per-socket allocation in the 384-byte size
// class: the next class is 416 bytes, paid by every open socket (see the
// idle footprint in docs/benchmarks.md). A new field must make room.
func TestSocketSizeClass(t *testing.T) {
	if n := unsafe.Sizeof(socket{}); n > 384 {
		t.Fatalf("socket is %d bytes, over the 384-byte size class", n)
	}
}
