package chiws

import (
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// coder/websocket has no API for an existing stream: over HTTP/2 (RFC
// 8441) it sees the GET upgrade it expects and the stream as the hijacked
// connection, and its 101 becomes a 200. h2Key is the Sec-WebSocket-Key of the request coder/websocket sees: RFC
// 8441 has no key, and the Sec-WebSocket-Accept derived from it is not sent.
const h2Key = "dGhlIHNhbXBsZSBub25jZQ=="

// h2UpgradeRequest returns r as the HTTP/1.1 upgrade request that
// coder/websocket expects; subprotocols and extensions are r's.
func h2UpgradeRequest(r *http.Request) *http.Request {
	up := r.Clone(r.Context())
	up.Method = http.MethodGet
	up.Header.Set("Upgrade", "websocket")
	up.Header.Set("Connection", "Upgrade")
	up.Header.Set("Sec-WebSocket-Key", h2Key)
	up.Header.Del(":protocol")
	return up
}

// h2Stream is the net.Conn of a WebSocket over an HTTP/2 stream: reads
// from the request body, flushed writes to the ResponseWriter. Neither may
// be used once the handler has returned, so every use is serialised with
// end, which the middleware calls before it returns.
type h2Stream struct {
	body          io.Reader
	w             http.ResponseWriter
	rc            *http.ResponseController
	local, remote net.Addr

	// mu serialises writes, rmu reads, ctl deadlines (set while either is
	// blocked); ended, set under all three: the handler is returning.
	mu, rmu, ctl sync.Mutex
	ended        bool
	closed       atomic.Bool
}

func newH2Stream(w http.ResponseWriter, r *http.Request) *h2Stream {
	local, ok := r.Context().Value(http.LocalAddrContextKey).(net.Addr)
	if !ok {
		local = h2Addr("")
	}
	return &h2Stream{body: r.Body, w: w, rc: http.NewResponseController(w), local: local, remote: h2Addr(r.RemoteAddr)}
}

// respond flushes the 200 that stands for coder/websocket's 101.
func (s *h2Stream) respond() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	h := s.w.Header()
	h.Del("Upgrade")
	h.Del("Connection")
	h.Del("Sec-WebSocket-Accept")
	// A header makes Flush wait until the HEADERS frame is written, which
	// an abort's RST_STREAM would otherwise overtake (docs/design.md).
	h.Set("Date", time.Now().UTC().Format(http.TimeFormat))
	s.w.WriteHeader(http.StatusOK)
	return s.rc.Flush()
}

func (s *h2Stream) Read(p []byte) (int, error) {
	s.rmu.Lock()
	defer s.rmu.Unlock()
	if s.ended || s.closed.Load() {
		return 0, net.ErrClosed
	}
	return s.body.Read(p)
}

func (s *h2Stream) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ended || s.closed.Load() {
		return 0, net.ErrClosed
	}
	n, err := s.w.Write(p)
	if err == nil {
		err = s.rc.Flush()
	}
	return n, err
}

// Close ends the reads, and a write blocked by flow control, which resets
// the stream; otherwise the stream ends when the handler returns.
func (s *h2Stream) Close() error {
	if !s.closed.Swap(true) {
		s.deadline(false)
	}
	return nil
}

func (s *h2Stream) Abort() { // resets the stream
	s.closed.Store(true)
	s.deadline(true)
}

// deadline ends a read, and with reset a write, in progress by setting a
// past deadline, as net/http's own timers do from other goroutines.
func (s *h2Stream) deadline(reset bool) {
	s.ctl.Lock()
	defer s.ctl.Unlock()
	if s.ended {
		return
	}
	_ = s.rc.SetReadDeadline(pastDeadline)
	if !reset && s.mu.TryLock() {
		s.mu.Unlock() // no write in progress; later ones see closed
		return
	}
	_ = s.rc.SetWriteDeadline(pastDeadline)
}

var pastDeadline = time.Unix(1, 0)

// end stops the stream's use of the writer and the body, ending a read in
// progress, and a write blocked by flow control with a reset.
func (s *h2Stream) end() {
	s.ctl.Lock()
	defer s.ctl.Unlock()
	if s.ended {
		return
	}
	if !s.rmu.TryLock() {
		_ = s.rc.SetReadDeadline(pastDeadline)
		s.rmu.Lock()
	}
	if !s.mu.TryLock() {
		_ = s.rc.SetWriteDeadline(pastDeadline)
		s.mu.Lock()
	}
	s.ended = true
	s.mu.Unlock()
	s.rmu.Unlock()
}

func (s *h2Stream) LocalAddr() net.Addr                { return s.local }
func (s *h2Stream) RemoteAddr() net.Addr               { return s.remote }
func (s *h2Stream) SetDeadline(t time.Time) error      { return nil }
func (s *h2Stream) SetReadDeadline(t time.Time) error  { return nil }
func (s *h2Stream) SetWriteDeadline(t time.Time) error { return nil }

type h2Addr string

func (a h2Addr) Network() string { return "tcp" }
func (a h2Addr) String() string  { return string(a) }
