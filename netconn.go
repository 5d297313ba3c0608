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
type upgradeWriter struct {
	http.ResponseWriter
	s        *socket
	hijacked bool
}

// Unwrap lets http.ResponseController reach the server's writer.
func (w *upgradeWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func (w *upgradeWriter) WriteHeader(status int) {
	if !w.hijacked {
		w.ResponseWriter.WriteHeader(status)
	}
}

func (w *upgradeWriter) Write(p []byte) (int, error) {
	if w.hijacked {
		return 0, http.ErrHijacked
	}
	return w.ResponseWriter.Write(p)
}

// Flush implements http.Flusher for handlers that stream before upgrading.
func (w *upgradeWriter) Flush() {
	if !w.hijacked {
		_ = http.NewResponseController(w.ResponseWriter).Flush()
	}
}

// Hijack implements http.Hijacker.
func (w *upgradeWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	c, brw, err := http.NewResponseController(w.ResponseWriter).Hijack()
	if err != nil {
		return nil, nil, err
	}
	w.hijacked = true
	nc := &w.s.nc
	nc.Conn = c
	// net/http's hijacked writer targets the raw connection; point it at
	// ours so written bytes are counted. It is empty here (the 101 was
	// flushed by WriteHeader), but flush first to be safe.
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
	connClosed        atomic.Bool // Close was called
}

func (c *netConn) hijacked() bool { return c.Conn != nil }

func (c *netConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.bytesIn.Add(int64(n))
	if err != nil {
		// EOF or reset: the peer is gone, and a handler that reads
		// through the embedded *websocket.Conn (wsjson) returns now
		// without being taken for an early return.
		c.s.readFailed.Store(true)
	}
	return n, err
}

func (c *netConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.bytesOut.Add(int64(n))
	if err != nil {
		c.s.readFailed.Store(true) // the connection is broken
	}
	return n, err
}

// Close closes the connection and marks the socket closed: coder/websocket
// closes it on every path that ends a socket.
func (c *netConn) Close() error {
	c.connClosed.Store(true)
	err := c.Conn.Close()
	c.s.markClosed()
	return err
}
