package wstest

import (
	"bytes"
	"testing"
)

// TestHPACKInt checks the integer encoding against RFC 7541's examples
// (C.1.1-C.1.3).
func TestHPACKInt(t *testing.T) {
	tests := []struct {
		name string
		n    uint
		v    uint64
		want []byte
	}{
		{"10, 5-bit prefix", 5, 10, []byte{0x0a}},
		{"1337, 5-bit prefix", 5, 1337, []byte{0x1f, 0x9a, 0x0a}},
		{"42, 8-bit prefix", 8, 42, []byte{0x2a}},
		{"127, 7-bit prefix", 7, 127, []byte{0x7f, 0x00}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := appendHPACKInt(nil, 0, tt.n, tt.v); !bytes.Equal(got, tt.want) {
				t.Errorf("got % x, want % x", got, tt.want)
			}
		})
	}
}
