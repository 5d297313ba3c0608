package chiws

import (
	"net/http"
	"net/http/httptest"
	"testing"
)

// TestHeldBack101: a 101 that Hijack was to write reaches the server's
// writer, before the body, when the handler writes or flushes instead of
// hijacking; under a wrapper below the middleware it is never held back,
// so that the wrapper (an access log) sees it.
func TestHeldBack101(t *testing.T) {
	tests := []struct {
		name     string
		wrapped  bool
		then     func(w *upgradeWriter)
		wantHeld bool
	}{
		{"write", false, func(w *upgradeWriter) { _, _ = w.Write([]byte("x")) }, true},
		{"flush", false, func(w *upgradeWriter) { w.Flush() }, true},
		{"wrapper below", true, func(w *upgradeWriter) {}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := httptest.NewRecorder()
			var below http.ResponseWriter = rec
			if tt.wrapped {
				below = &unwrapper{rec}
			}
			w := &upgradeWriter{ResponseWriter: below, direct: true}
			w.WriteHeader(http.StatusSwitchingProtocols)
			if w.switching != tt.wantHeld {
				t.Fatalf("held back = %v, want %v", w.switching, tt.wantHeld)
			}
			tt.then(w)
			if rec.Code != http.StatusSwitchingProtocols || w.switching {
				t.Fatalf("server writer got %d (held back %v), want 101", rec.Code, w.switching)
			}
		})
	}
}

type unwrapper struct{ http.ResponseWriter }

func (u *unwrapper) Unwrap() http.ResponseWriter { return u.ResponseWriter }
