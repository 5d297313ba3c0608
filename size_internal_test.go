package chiws

import (
	"testing"
	"unsafe"
)

// TestSocketSizeClass keeps the per-socket allocation in the 640-byte size
// class: the next class is 704 bytes, paid by every open socket (see the
// idle footprint in docs/benchmarks.md). A new field must make room.
func TestSocketSizeClass(t *testing.T) {
	if n := unsafe.Sizeof(socket{}); n > 640 {
		t.Fatalf("socket is %d bytes, over the 640-byte size class", n)
	}
}
