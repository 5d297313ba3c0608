package chiws

import (
	"bufio"
	"net"
	"net/http"
	"sync/atomic"
)

// upgradeWriter is the ResponseWriter route handlers see on upgrade
// requests. Its Hijack hands coder/websocket a netConn, which tells the
// socket when the connection closes and counts its bytes; after the hijack
// it swallows writes, so that middleware writing a late status (chi's
// Timeout writes 504 when its deadline has passed) does not make net/http
// log "response.WriteHeader on hijacked connection".
//
// Its state is in the socket (hijacked, switching, direct), where it
// costs no padding. switching is set by WriteHeader(101): Hijack writes
// the 101 itself. direct is set by Accept when it was given this writer
// itself, so that no wrapper in between can hijack past us and lose the
// 101.
type upgradeWriter struct {
	http.ResponseWriter
	s *socket
}

// Unwrap lets http.ResponseController reach the server's writer.
func (w *upgradeWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// WriteHeader passes status on, except 101 Switching Protocols: Hijack
// writes that one itself, as gorilla/websocket does, instead of letting
// net/http write it inside Hijack. net/http's path (chunkWriter.writeHeader
// has a 2.8 KiB frame) is the deepest point of a socket's life, about
// 7.5 KiB below the connection goroutine's entry: under chi and chiws it
// doubled the goroutine's stack from 8 to 16 KiB, and Go never shrinks it
// back while the socket waits in Read with over a quarter of it in use.
// Writing the status line and headers here needs a few hundred bytes of
// stack and skips what a 101 does not need (the Date header).
func (w *upgradeWriter) WriteHeader(status int) {
	switch {
	case w.s.hijacked || w.s.switching:
	case status == http.StatusSwitchingProtocols && w.s.direct && isServerWriter(w.ResponseWriter):
		w.s.switching = true
	default:
		w.ResponseWriter.WriteHeader(status)
	}
}

// isServerWriter reports whether w is net/http's own writer: it hijacks and
// wraps nothing. Under a wrapper (chi's Logger, say), the 101 goes through
// the wrapper as usual, so that access logs record it; the stack saving is
// then lost, which table 5b of docs/benchmarks.md measures.
// noBodyHeaders are the headers net/http leaves out of a 101 (RFC 9110
// forbids Content-Length on a 1xx response).
var noBodyHeaders = map[string]bool{"Content-Length": true, "Transfer-Encoding": true}

func isServerWriter(w http.ResponseWriter) bool {
	if _, ok := w.(interface{ Unwrap() http.ResponseWriter }); ok {
		return false
	}
	_, ok := w.(http.Hijacker)
	return ok
}

// flushSwitching hands a pending 101 to net/http, for a handler that writes
// or flushes after WriteHeader(101) instead of hijacking.
func (w *upgradeWriter) flushSwitching() {
	if w.s.switching {
		w.s.switching = false
		w.ResponseWriter.WriteHeader(http.StatusSwitchingProtocols)
	}
}

func (w *upgradeWriter) Write(p []byte) (int, error) {
	if w.s.hijacked {
		return 0, http.ErrHijacked
	}
	w.flushSwitching()
	return w.ResponseWriter.Write(p)
}

// Flush implements http.Flusher for handlers that stream before upgrading.
func (w *upgradeWriter) Flush() {
	if !w.s.hijacked {
		w.flushSwitching()
		_ = http.NewResponseController(w.ResponseWriter).Flush()
	}
}

// Hijack implements http.Hijacker.
func (w *upgradeWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	var (
		c   net.Conn
		brw *bufio.ReadWriter
		err error
	)
	if w.s.switching {
		w.s.switching = false // on error, let the caller's error status through
		c, brw, err = w.ResponseWriter.(http.Hijacker).Hijack()
		if err != nil {
			return nil, nil, err
		}
		bw := brw.Writer
		_, _ = bw.WriteString("HTTP/1.1 101 Switching Protocols\r\n")
		_ = w.ResponseWriter.Header().WriteSubset(bw, noBodyHeaders)
		_, _ = bw.WriteString("\r\n")
	} else {
		c, brw, err = http.NewResponseController(w.ResponseWriter).Hijack()
		if err != nil {
			return nil, nil, err
		}
	}
	w.s.hijacked = true
	nc := &w.s.nc
	nc.Conn = c
	// net/http's hijacked writer targets the raw connection; point it at
	// ours so written bytes are counted, after flushing the 101.
	if err := brw.Writer.Flush(); err != nil {
		_ = c.Close()
		return nil, nil, err
	}
	brw.Writer.Reset(nc)
	return nc, brw, nil
}

// netConn wraps the hijacked connection.
type netConn struct {
	net.Conn
	s                 *socket
	bytesIn, bytesOut atomic.Int64
	connClosed        atomic.Bool  // Close was called
	writes            atomic.Int32 // Writes in progress
}

func (c *netConn) hijacked() bool { return c.Conn != nil }

func (c *netConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.bytesIn.Add(int64(n))
	if n > 0 && c.s.kaWaiting.Load() {
		c.s.kaWaiting.Store(false) // a sign of life after a keep-alive ping
	}
	if err != nil {
		// EOF or reset: the peer is gone, and a handler that reads
		// through the embedded *websocket.Conn (wsjson) returns now
		// without being taken for an early return.
		c.s.readFailed.Store(true)
	}
	return n, err
}

// writeChunk is the most Write hands the kernel at once, so that bytesOut
// shows the progress of a large message (see socket.keepAlive).
const writeChunk = 64 << 10

// Write writes p in chunks of at most writeChunk, counting each.
func (c *netConn) Write(p []byte) (int, error) {
	c.writes.Add(1)
	defer c.writes.Add(-1)
	total := 0
	for len(p) > 0 {
		chunk := p
		if len(chunk) > writeChunk {
			chunk = chunk[:writeChunk]
		}
		n, err := c.Conn.Write(chunk)
		total += n
		c.bytesOut.Add(int64(n))
		p = p[n:]
		if err != nil {
			c.s.readFailed.Store(true) // the connection is broken
			return total, err
		}
	}
	c.s.wrote() // may be a keep-alive ping; see pingContext
	return total, nil
}

// Close closes the connection and marks the socket closed: coder/websocket
// closes it on every path that ends a socket.
func (c *netConn) Close() error {
	c.connClosed.Store(true)
	err := c.Conn.Close()
	c.s.markClosed()
	return err
}
