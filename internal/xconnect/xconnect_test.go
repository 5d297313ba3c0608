package xconnect

import "testing"

func TestEnabled(t *testing.T) {
	tests := []struct {
		give string
		want bool
	}{
		{"", false},
		{"http2xconnect=0", false},
		{"http2xconnect=1", true},
		{"http2debug=1,http2xconnect=1", true},
		{"http2xconnect=1, http2debug=2", true},
		{"xhttp2xconnect=10", false},
	}
	for _, tt := range tests {
		t.Run(tt.give, func(t *testing.T) {
			t.Setenv("GODEBUG", tt.give)
			if got := Enabled(); got != tt.want {
				t.Errorf("Enabled() with GODEBUG=%q = %v, want %v", tt.give, got, tt.want)
			}
		})
	}
}
