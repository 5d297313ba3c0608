package bench

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"
	"time"

	"github.com/chiws/chiws"
	"github.com/coder/websocket"
	"github.com/go-chi/chi/v5"
	gorilla "github.com/gorilla/websocket"
)

// This file holds the in-process benchmarks: the pass-through path of an
// ordinary request and the upgrade path, on a fake ResponseWriter that
// implements http.Hijacker the way net/http's does (same for every
// candidate), so that only the candidates' own work differs.

// PassThroughHandlers returns the handlers compared by BenchPassThrough,
// in report order: a bare handler, the bare handler behind the chiws
// middleware, and the same two behind a chi router.
func PassThroughHandlers() []NamedHandler {
	bare := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusNoContent)
	})
	mw := chiws.New(chiws.Options{})
	chiBare := chi.NewRouter()
	chiBare.Get("/", bare)
	chiMW := chi.NewRouter()
	chiMW.Use(mw.Handler)
	chiMW.Get("/", bare)
	return []NamedHandler{
		{"bare", bare},
		{"chiws(bare)", mw.Handler(bare)},
		{"chi", chiBare},
		{"chi+chiws", chiMW},
	}
}

// NamedHandler is a benchmark candidate.
type NamedHandler struct {
	Name    string
	Handler http.Handler
}

// BenchPassThrough serves an ordinary GET / with h in a loop.
func BenchPassThrough(b *testing.B, h http.Handler) {
	r := httptest.NewRequest(http.MethodGet, "/", nil)
	r.Header.Set("Accept", "text/html")
	w := &plainWriter{hdr: make(http.Header)}
	b.ReportAllocs()
	for b.Loop() {
		w.status = 0
		h.ServeHTTP(w, r)
		if w.status != http.StatusNoContent {
			b.Fatalf("status %d", w.status)
		}
	}
}

type plainWriter struct {
	hdr    http.Header
	status int
}

func (w *plainWriter) Header() http.Header         { return w.hdr }
func (w *plainWriter) Write(p []byte) (int, error) { return len(p), nil }
func (w *plainWriter) WriteHeader(s int)           { w.status = s }

// UpgradeHandlers returns the handlers compared by BenchUpgrade, in report
// order. Each accepts the socket and closes it at once without a close
// handshake.
func UpgradeHandlers() []NamedHandler {
	coder := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := websocket.Accept(w, r, &websocket.AcceptOptions{InsecureSkipVerify: true})
		if err != nil {
			return
		}
		_ = c.CloseNow()
	})
	chiCoder := chi.NewRouter()
	chiCoder.Get(PathIdle, coder)

	mw := chiws.New(chiws.Options{AllowedOrigins: []string{"*"}})
	chiChiws := chi.NewRouter()
	chiChiws.Use(mw.Handler)
	chiChiws.Get(PathIdle, func(w http.ResponseWriter, r *http.Request) {
		c, err := chiws.Accept(w, r, nil)
		if err != nil {
			return
		}
		_ = c.CloseNow()
	})

	up := &gorilla.Upgrader{CheckOrigin: func(*http.Request) bool { return true }}
	gor := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		_ = c.Close()
	})
	return []NamedHandler{
		{Coder, coder},
		{ChiCoder, chiCoder},
		{Chiws, chiChiws},
		{Gorilla, gor},
	}
}

// UpgradeRequest returns a valid WebSocket upgrade request for PathIdle.
func UpgradeRequest() *http.Request {
	r := httptest.NewRequest(http.MethodGet, PathIdle, nil)
	r.Header.Set("Upgrade", "websocket")
	r.Header.Set("Connection", "Upgrade")
	r.Header.Set("Sec-WebSocket-Version", "13")
	r.Header.Set("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
	return r
}

// BenchUpgrade serves an upgrade request with h in a loop, on a fake
// hijackable connection.
func BenchUpgrade(b *testing.B, h http.Handler) {
	r := UpgradeRequest()
	w := NewHijackWriter()
	b.ReportAllocs()
	for b.Loop() {
		w.Reset()
		h.ServeHTTP(w, r)
		if !w.Upgraded() {
			b.Fatalf("status %d, hijacked %v", w.Status(), w.Hijacked())
		}
	}
}

// HijackWriter is a ResponseWriter that implements http.Hijacker,
// http.Flusher and the deadline methods of http.ResponseController like
// net/http's: WriteHeader(101) writes the status line and headers to the
// connection at once, and Hijack returns the connection with the
// server's read buffer and a fresh 4 KiB write buffer. The connection
// discards writes and reads EOF.
type HijackWriter struct {
	hdr      http.Header
	status   int
	hijacked bool
	conn     discardConn
	br       *bufio.Reader
	bw       *bufio.Writer
	scratch  [8]byte
}

// NewHijackWriter returns a HijackWriter ready for a request.
func NewHijackWriter() *HijackWriter {
	w := &HijackWriter{hdr: make(http.Header)}
	w.br = bufio.NewReaderSize(&w.conn, 4096)
	w.bw = bufio.NewWriterSize(&w.conn, 4096)
	return w
}

// Reset prepares w for the next request, reusing its buffers as net/http
// reuses its connection's.
func (w *HijackWriter) Reset() {
	clear(w.hdr)
	w.status = 0
	w.hijacked = false
	w.br.Reset(&w.conn)
	w.bw.Reset(&w.conn)
}

// Status is the status written, or 0.
func (w *HijackWriter) Status() int { return w.status }

// Upgraded reports whether the connection was hijacked without an error
// status: coder/websocket writes 101 through WriteHeader, gorilla writes it
// on the hijacked connection itself.
func (w *HijackWriter) Upgraded() bool {
	return w.hijacked && (w.status == 0 || w.status == http.StatusSwitchingProtocols)
}

// Hijacked reports whether Hijack was called.
func (w *HijackWriter) Hijacked() bool { return w.hijacked }

// Header implements http.ResponseWriter.
func (w *HijackWriter) Header() http.Header { return w.hdr }

// Write implements http.ResponseWriter.
func (w *HijackWriter) Write(p []byte) (int, error) {
	if w.hijacked {
		return 0, http.ErrHijacked
	}
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	return w.bw.Write(p)
}

// WriteHeader implements http.ResponseWriter.
func (w *HijackWriter) WriteHeader(status int) {
	if w.status != 0 || w.hijacked {
		return
	}
	w.status = status
	_, _ = w.bw.WriteString("HTTP/1.1 ")
	_, _ = w.bw.Write(strconv.AppendInt(w.scratch[:0], int64(status), 10))
	_, _ = w.bw.WriteString(" ")
	_, _ = w.bw.WriteString(http.StatusText(status))
	_, _ = w.bw.WriteString("\r\n")
	_ = w.hdr.Write(w.bw)
	_, _ = w.bw.WriteString("\r\n")
	_ = w.bw.Flush()
}

// Flush implements http.Flusher.
func (w *HijackWriter) Flush() { _ = w.bw.Flush() }

// SetReadDeadline is found by http.ResponseController.
func (w *HijackWriter) SetReadDeadline(time.Time) error { return nil }

// SetWriteDeadline is found by http.ResponseController.
func (w *HijackWriter) SetWriteDeadline(time.Time) error { return nil }

// Hijack implements http.Hijacker.
func (w *HijackWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	if w.hijacked {
		return nil, nil, http.ErrHijacked
	}
	w.hijacked = true
	return &w.conn, bufio.NewReadWriter(w.br, bufio.NewWriterSize(&w.conn, 4096)), nil
}

// discardConn is a net.Conn that discards writes and reads EOF.
type discardConn struct{}

var fakeAddr = &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 8080}

func (*discardConn) Read([]byte) (int, error)         { return 0, io.EOF }
func (*discardConn) Write(p []byte) (int, error)      { return len(p), nil }
func (*discardConn) Close() error                     { return nil }
func (*discardConn) LocalAddr() net.Addr              { return fakeAddr }
func (*discardConn) RemoteAddr() net.Addr             { return fakeAddr }
func (*discardConn) SetDeadline(time.Time) error      { return nil }
func (*discardConn) SetReadDeadline(time.Time) error  { return nil }
func (*discardConn) SetWriteDeadline(time.Time) error { return nil }

// BenchSyscallFloor measures the system calls a server cannot avoid per
// keep-alive ping: one write(2) of 2 bytes (an empty ping frame's size) on
// a loopback TCP connection, and one read(2) of 2 bytes (the pong's size)
// at the other end. Both run in the benchmark's goroutine, one after the
// other, so no scheduling is included: it is a floor, not a model.
func BenchSyscallFloor(b *testing.B) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() { // ends after one Accept (or when ln closes)
		c, _ := ln.Accept()
		accepted <- c
	}()
	a, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	defer a.Close()
	peer := <-accepted
	if peer == nil {
		b.Fatal("accept failed")
	}
	defer peer.Close()
	out, in := []byte{0, 0}, make([]byte, 2)
	b.ResetTimer()
	for range b.N {
		if _, err := a.Write(out); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(peer, in); err != nil {
			b.Fatal(err)
		}
	}
}
