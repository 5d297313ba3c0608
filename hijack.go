package chiws

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
)

// upgradeWriter is the ResponseWriter route handlers see on upgrade
// requests. Its Hijack hands Accept a netConn, and any other caller the
// connection itself. After the hijack it swallows writes: a late status
// (chi's Timeout writes 504) would make net/http log "response.WriteHeader
// on hijacked connection". Only the handler's goroutine uses it.
type upgradeWriter struct {
	http.ResponseWriter
	m    *Middleware
	conn *Conn     // set by Accept: the socket the connection is for
	h2   *h2Stream // the stream of an HTTP/2 WebSocket (http2.go), or nil
	nc   *netConn  // set up by Hijack for Accept
	// foreign: hijacked by someone else than Accept; refused: an HTTP/2
	// route's 2xx answered 501; direct: Accept was given this writer;
	// held101: Hijack is to write the 101 (for HTTP/2, its 200).
	hijacked, foreign, refused, answered, direct, held101 bool
}

func (w *upgradeWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func (w *upgradeWriter) WriteHeader(status int) {
	switch {
	case w.hijacked || w.held101:
	case w.h2 != nil && w.conn == nil && status >= 200 && status < 300:
		w.refuseH2()
	case w.h2 != nil && status == http.StatusSwitchingProtocols && w.conn != nil:
		w.held101 = true // RFC 8441: 200 once the stream is the socket's (Hijack)
	case status == http.StatusSwitchingProtocols && w.direct && !isWrapper(w.ResponseWriter):
		// Hijack writes it, as gorilla/websocket does: net/http's path for
		// a 101 doubles the stack the handler keeps while the socket waits
		// (TestIdleSocketStack, docs/design.md). A wrapper below sees it.
		w.held101 = true
	default:
		w.writeHeader(status)
	}
	w.answered = true
}

// refuseH2 answers 501 instead of a route's 2xx without Accept (RFC 8441
// takes any 2xx for an open socket), and swallows the route's body.
func (w *upgradeWriter) refuseH2() {
	w.hijacked, w.refused, w.answered = true, true, true
	httpError(w.ResponseWriter, http.StatusNotImplemented)
}

// writeHeader passes status on; a 101 without Date (optional on 1xx, RFC
// 9110 6.6.1, and costly to format), suppressed by nil as documented.
func (w *upgradeWriter) writeHeader(status int) {
	if status == http.StatusSwitchingProtocols {
		w.ResponseWriter.Header()["Date"] = nil
	}
	w.ResponseWriter.WriteHeader(status)
}

// isWrapper: a writer that does not unwrap passes for the server's.
func isWrapper(w http.ResponseWriter) bool {
	_, ok := w.(interface{ Unwrap() http.ResponseWriter })
	return ok
}

// release101 passes a held 101 on, for a handler that writes instead.
func (w *upgradeWriter) release101() {
	if w.held101 && w.h2 == nil {
		w.held101 = false
		w.writeHeader(http.StatusSwitchingProtocols)
	}
}

func (w *upgradeWriter) Write(p []byte) (int, error) {
	if !w.answered {
		w.WriteHeader(http.StatusOK)
	}
	if w.hijacked {
		return len(p), nil
	}
	w.release101()
	return w.ResponseWriter.Write(p)
}

func (w *upgradeWriter) Flush() {
	if !w.answered {
		w.WriteHeader(http.StatusOK)
	}
	if !w.hijacked {
		w.release101()
		_ = http.NewResponseController(w.ResponseWriter).Flush()
	}
}

// Hijack gives Accept a netConn, and anyone else the server's connection.
func (w *upgradeWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	if w.hijacked {
		return nil, nil, http.ErrHijacked
	}
	if w.h2 != nil {
		if w.conn == nil { // HTTP/2 streams cannot be hijacked
			return nil, nil, http.ErrNotSupported
		}
		if err := w.h2.respond(); err != nil {
			return nil, nil, err
		}
		w.hijacked, w.held101 = true, false
		w.nc.init(w.h2, w.conn)
		return w.nc, bufio.NewReadWriter(bufio.NewReader(w.nc), bufio.NewWriter(w.nc)), nil
	}
	hj, ok := find[http.Hijacker](w.ResponseWriter)
	if !ok {
		return nil, nil, http.ErrNotSupported
	}
	c, brw, err := hj.Hijack()
	if err != nil {
		w.held101 = false // not sent: the caller's error status goes alone
		return nil, nil, err
	}
	w.hijacked = true
	if w.conn == nil {
		w.foreign = true
		w.m.count(0, 1)
		return c, brw, nil
	}
	w.nc.init(c, w.conn)
	if w.held101 { // as net/http would, without Date
		_, _ = brw.Writer.WriteString("HTTP/1.1 101 Switching Protocols\r\n")
		_ = w.ResponseWriter.Header().WriteSubset(brw.Writer, noBodyHeaders)
		_, _ = brw.Writer.WriteString("\r\n")
	}
	// net/http's buffers target the raw connection: point them at ours,
	// after flushing the 101; bytes the client sent early stay buffered.
	if err := brw.Writer.Flush(); err != nil {
		_ = w.nc.Close()
		return nil, nil, err
	}
	brw.Writer.Reset(w.nc)
	if n := brw.Reader.Buffered(); n == 0 {
		brw.Reader.Reset(w.nc)
	} else {
		early, _ := brw.Reader.Peek(n)
		brw.Reader.Reset(io.MultiReader(bytes.NewReader(bytes.Clone(early)), w.nc))
		_, _ = brw.Reader.Peek(n)
	}
	return w.nc, brw, nil
}

var noBodyHeaders = map[string]bool{"Content-Length": true, "Transfer-Encoding": true, "Date": true} // as net/http

// upgradable reports whether a writer below can hijack the connection
// (HTTP/1.1) or flush the stream (HTTP/2), else names what it needs: a
// writer that cannot (http.TimeoutHandler's) would buffer a lone 101.
func (w *upgradeWriter) upgradable() (bool, string) {
	if w.h2 != nil {
		_, ok := find[http.Flusher](w.ResponseWriter)
		_, okErr := find[interface{ FlushError() error }](w.ResponseWriter)
		return ok || okErr, "flush an HTTP/2 stream"
	}
	_, ok := find[http.Hijacker](w.ResponseWriter)
	return ok, "hijack the connection"
}

// find looks for T in w and what it unwraps to, as ResponseController does.
func find[T any](w http.ResponseWriter) (T, bool) {
	for {
		if t, ok := w.(T); ok {
			return t, true
		}
		u, ok := w.(interface{ Unwrap() http.ResponseWriter })
		if !ok {
			var zero T
			return zero, false
		}
		w = u.Unwrap()
	}
}

// netConn wraps the hijacked connection: it counts the traffic (which the
// keep-alive compares), notes an I/O error (the connection broke), and
// tells its Conn when it closes, once.
type netConn struct {
	net.Conn
	c         *Conn
	closeOnce sync.Once
	closed    atomic.Bool
	broke     atomic.Bool // a read or write failed while open

	bytesIn, bytesOut atomic.Int64
	writes            atomic.Int32 // Writes in progress
}

func (nc *netConn) init(conn net.Conn, c *Conn) { nc.Conn, nc.c = conn, c }

func (c *netConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.bytesIn.Add(int64(n))
	if err != nil && !c.closed.Load() {
		c.broke.Store(true)
	}
	return n, err
}

// writeChunk is the most Write hands the kernel at once, so that bytesOut
// shows a large message's progress to a slow reader (see heartbeat).
const writeChunk = 64 << 10

func (c *netConn) Write(p []byte) (total int, err error) {
	c.writes.Add(1)
	defer c.writes.Add(-1)
	for len(p) > 0 && err == nil {
		var n int
		n, err = c.Conn.Write(p[:min(len(p), writeChunk)])
		total += n
		p = p[n:]
		c.bytesOut.Add(int64(n))
	}
	if err != nil && !c.closed.Load() {
		c.broke.Store(true)
	}
	return total, err
}

// Close closes the connection; the first call also tells its Conn.
func (c *netConn) Close() error {
	c.closed.Store(true)
	err := c.Conn.Close()
	c.closeOnce.Do(c.c.connClosed)
	return err
}

// abort closes the connection; an HTTP/2 stream is reset.
func (c *netConn) abort() error {
	if s, ok := c.Conn.(*h2Stream); ok {
		s.Abort()
	}
	return c.Close()
}

// isClosed reports whether Close was called; nil (no hijack yet) is open.
func (c *netConn) isClosed() bool { return c != nil && c.closed.Load() }
