package chiws

import (
	"bufio"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
)

// TestHeldBack101: a 101 that Hijack was to write reaches the server's
// writer, before the body, when the handler writes or flushes instead of
// hijacking; under a wrapper below the middleware it is never held back,
// so that the wrapper (an access log) sees it. When the hijack fails, no
// 101 goes out: the caller's error status is the whole answer.
func TestHeldBack101(t *testing.T) {
	server := func(rec *httptest.ResponseRecorder) http.ResponseWriter { return rec }
	tests := []struct {
		name     string
		below    func(rec *httptest.ResponseRecorder) http.ResponseWriter
		then     func(w *upgradeWriter)
		wantHeld bool
		want     int // the status the server's writer got
	}{
		{"write", server, func(w *upgradeWriter) { _, _ = w.Write([]byte("x")) }, true, http.StatusSwitchingProtocols},
		{"flush", server, func(w *upgradeWriter) { w.Flush() }, true, http.StatusSwitchingProtocols},
		{"wrapper below", func(rec *httptest.ResponseRecorder) http.ResponseWriter { return &unwrapper{rec} },
			func(w *upgradeWriter) {}, false, http.StatusSwitchingProtocols},
		{"hijack fails", func(rec *httptest.ResponseRecorder) http.ResponseWriter { return &failingHijacker{rec} }, func(w *upgradeWriter) {
			if _, _, err := w.Hijack(); err == nil {
				t.Fatal("Hijack succeeded on a writer that cannot hijack")
			}
			httpError(w, http.StatusInternalServerError) // as coder/websocket answers
		}, true, http.StatusInternalServerError},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := httptest.NewRecorder()
			w := &upgradeWriter{ResponseWriter: tt.below(rec), direct: true, conn: &Conn{}}
			w.WriteHeader(http.StatusSwitchingProtocols)
			if w.held101 != tt.wantHeld {
				t.Fatalf("held back = %v, want %v", w.held101, tt.wantHeld)
			}
			tt.then(w)
			if rec.Code != tt.want || w.held101 {
				t.Fatalf("server writer got %d (held back %v), want %d", rec.Code, w.held101, tt.want)
			}
		})
	}
}

type unwrapper struct{ http.ResponseWriter }

// failingHijacker is a server's writer whose Hijack fails.
type failingHijacker struct{ http.ResponseWriter }

func (f *failingHijacker) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	return nil, nil, errors.New("cannot hijack")
}

func (u *unwrapper) Unwrap() http.ResponseWriter { return u.ResponseWriter }
