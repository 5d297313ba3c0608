package chiws

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unicode/utf8"

	"github.com/coder/websocket"
	"go.uber.org/zap"
)

// Conn is an accepted WebSocket. It embeds *websocket.Conn, so all of
// coder/websocket's API works on it (and c.Conn can be passed to wsjson),
// and adds the socket's lifecycle: Done, Wait and Context.
//
// Read, Reader, Write and Writer are wrapped to count messages and to see
// the error that ends the socket; calls made on the embedded c.Conn work
// the same and are counted in bytes only.
type Conn struct {
	*websocket.Conn

	m      *Middleware
	req    *http.Request // the request given to Accept, for logs
	nc     *netConn      // the hijacked connection
	hb     heartbeat     // armed by startHeartbeat, unless keep-alive is off
	ctx    context.Context
	cancel context.CancelCauseFunc
	start  time.Time

	msgsIn, msgsOut atomic.Uint64

	// sawEnd is set once a read or write through Conn failed or saw a
	// close frame: the handler returning afterwards is not an early return.
	sawEnd atomic.Bool

	// rd wraps the io.Reader returned by Reader; one reader at a time per
	// socket (coder/websocket's rule), so it is reused.
	rd msgReader

	// holds counts the reads and pings in progress, plus downBit once the
	// connection closed; over is set by whoever ends the socket. See
	// holdEnd.
	holds atomic.Int64
	over  atomic.Bool

	mu     sync.Mutex
	cause  closeCause // why the socket ended, set once (by nil: not yet)
	end    time.Time  // when the connection closed
	logged bool       // the close log is written (see logClose)
}

// downBit in Conn.holds means the connection closed.
const downBit = 1 << 40

// init prepares the Conn of an upgrade request, before the handshake: its
// connection and websocket.Conn are set by Accept.
func (c *Conn) init(m *Middleware, r *http.Request) {
	c.m, c.req = m, r
	// The request's values without its deadline or cancellation: chi's
	// Timeout middleware must not end sockets.
	c.ctx, c.cancel = context.WithCancelCause(context.WithoutCancel(r.Context()))
	c.rd.c = c
}

// Done returns a channel closed once the socket's network connection is
// closed, whoever closed it: the handler, the peer, a protocol error, the
// keep-alive or Shutdown. It is c.Context().Done().
func (c *Conn) Done() <-chan struct{} { return c.ctx.Done() }

// Wait blocks until the socket is closed (it returns nil) or ctx is done (it
// returns ctx.Err() and leaves the socket open). It is the Go form of
// ASP.NET Core's TaskCompletionSource pattern: a handler that gives the
// socket to a background goroutine must wait for it, because the socket is
// closed when the handler returns.
//
// Do not pass a context that expires with the request (chi's Timeout
// middleware sets one): use context.Background() or c.Context().
func (c *Conn) Wait(ctx context.Context) error {
	select {
	case <-c.ctx.Done():
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Context returns a context that carries the request's values (chi's route
// context, request ID, authentication...) but not its deadline or
// cancellation, so chi's Timeout middleware does not end sockets. It is
// cancelled when the socket's connection closes, and context.Cause then
// says why: an error that matches one of ErrClosedByPeer,
// ErrClosedByServer, ErrKeepAliveTimeout, ErrShuttingDown,
// ErrHandlerReturned, ErrHandlerPanicked or ErrConnectionLost with
// errors.Is, and carries the close code when one was sent or received
// (websocket.CloseStatus).
func (c *Conn) Context() context.Context { return c.ctx }

// Close performs the WebSocket close handshake with code and reason and
// closes the connection. See websocket.Conn.Close.
func (c *Conn) Close(code websocket.StatusCode, reason string) error {
	c.record(ErrClosedByServer, code, reason)
	return c.Conn.Close(code, reason)
}

// CloseNow closes the connection without a close handshake. See
// websocket.Conn.CloseNow.
func (c *Conn) CloseNow() error {
	c.record(ErrClosedByServer, websocket.StatusAbnormalClosure, "")
	return c.Conn.CloseNow()
}

// Read reads a whole message; see websocket.Conn.Read. A text message that
// is not valid UTF-8 closes the socket with 1007 Invalid Frame Payload Data
// (RFC 6455 section 8.1: coder/websocket leaves the check to the caller) and
// returns an error.
func (c *Conn) Read(ctx context.Context) (websocket.MessageType, []byte, error) {
	c.holdEnd()
	defer c.releaseEnd()
	typ, p, err := c.Conn.Read(ctx)
	if err == nil && typ == websocket.MessageText && !utf8.Valid(p) {
		_ = c.closeBounded(ErrClosedByServer, websocket.StatusInvalidFramePayloadData, "invalid UTF-8")
		c.sawEnd.Store(true)
		return typ, nil, errInvalidUTF8
	}
	c.readDone(err)
	return typ, p, err
}

// errInvalidUTF8 is returned by Read for a text message that is not UTF-8:
// websocket.CloseStatus gives the 1007 the socket was closed with.
var errInvalidUTF8 = fmt.Errorf("chiws: read: text message is not valid UTF-8: %w",
	websocket.CloseError{Code: websocket.StatusInvalidFramePayloadData, Reason: "invalid UTF-8"})

// Reader returns a reader for the next message; see websocket.Conn.Reader.
// Text messages read this way are not checked for UTF-8.
func (c *Conn) Reader(ctx context.Context) (websocket.MessageType, io.Reader, error) {
	c.holdEnd()
	defer c.releaseEnd()
	typ, rd, err := c.Conn.Reader(ctx)
	c.readDone(err)
	if err != nil {
		return typ, rd, err
	}
	c.rd.r = rd
	return typ, &c.rd, nil
}

// CloseRead starts a goroutine that reads the socket for a handler that
// only writes, so that pongs and the peer's close frame are processed; see
// websocket.Conn.CloseRead. Unlike the embedded one, it reads through
// Conn, so the peer's close code reaches Context's cause and the close
// log. A data message closes the socket with 1008 Policy Violation. The
// returned context is cancelled when the socket closes. The goroutine is
// the socket's: it ends when the socket closes.
func (c *Conn) CloseRead(ctx context.Context) context.Context {
	ctx, cancel := context.WithCancel(ctx)
	go func() { // ends when the socket closes, which fails its read
		defer cancel()
		if _, _, err := c.Reader(ctx); err == nil {
			_ = c.Close(websocket.StatusPolicyViolation, "unexpected data message")
		}
	}()
	return ctx
}

// msgReader sees the errors of a message read through Conn.Reader (a
// message over the read limit fails there, not in Reader).
type msgReader struct {
	r io.Reader
	c *Conn
}

func (r *msgReader) Read(p []byte) (int, error) {
	r.c.holdEnd()
	defer r.c.releaseEnd()
	n, err := r.r.Read(p)
	if err != nil && err != io.EOF {
		r.c.readDone(err)
	}
	return n, err
}

// Write writes a whole message; see websocket.Conn.Write.
func (c *Conn) Write(ctx context.Context, typ websocket.MessageType, p []byte) error {
	err := c.Conn.Write(ctx, typ, p)
	c.wrote(err)
	return err
}

// Writer returns a writer for the next message; see websocket.Conn.Writer.
func (c *Conn) Writer(ctx context.Context, typ websocket.MessageType) (io.WriteCloser, error) {
	wr, err := c.Conn.Writer(ctx, typ)
	c.wrote(err)
	return wr, err
}

func (c *Conn) wrote(err error) {
	if err == nil {
		c.msgsOut.Add(1)
		return
	}
	// A failed write leaves the socket unusable (coder/websocket closes
	// it): the handler returning now is not an early return. net.ErrClosed
	// means someone else closed it, who records why.
	switch {
	case errors.Is(err, net.ErrClosed):
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		c.record(ErrClosedByServer, websocket.StatusAbnormalClosure, "write context done")
	default:
		c.record(ErrConnectionLost, websocket.StatusAbnormalClosure, "")
	}
	c.sawEnd.Store(true)
}

// readDone accounts for the result of a read: a message, or the error
// that ends the socket for the handler.
func (c *Conn) readDone(err error) {
	if err == nil {
		c.msgsIn.Add(1)
		return
	}
	defer c.sawEnd.Store(true) // after the cause: see upgrade.finish
	var ce websocket.CloseError
	switch {
	case errors.Is(err, net.ErrClosed):
		// Closed by someone else, who records why.
	case errors.As(err, &ce):
		c.record(ErrClosedByPeer, ce.Code, ce.Reason)
	case errors.Is(err, websocket.ErrMessageTooBig):
		// coder/websocket has sent 1009; the close handshake is finished
		// when the handler returns (see upgrade.finish).
		c.record(ErrClosedByServer, websocket.StatusMessageTooBig, "message too big")
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF),
		errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		// The peer vanished, reset the connection or closed it without a
		// close frame.
		c.record(ErrConnectionLost, websocket.StatusAbnormalClosure, "")
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		// The handler's own context ended the read; coder/websocket
		// closes the connection then, without a close frame.
		c.record(ErrClosedByServer, websocket.StatusAbnormalClosure, "read context done")
	default:
		// The peer broke the protocol. coder/websocket sends a 1002 for
		// most such errors and none for some; Close sends one when none
		// went out yet (RFC 6455 section 7.1.7) and then waits for the
		// peer's close frame, so the close code reaches the peer.
		_ = c.closeBounded(ErrClosedByServer, websocket.StatusProtocolError, "protocol error")
	}
}

// record notes why the socket is ending; the first caller wins and gets
// true. It must be called before the connection closes for the reason to
// reach Conn.Context's cause.
func (c *Conn) record(by error, code websocket.StatusCode, reason string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cause.by != nil {
		return false
	}
	c.cause = closeCause{by: by, code: code, reason: reason}
	return true
}

// endedBy reports whether the recorded cause is one of causes.
func (c *Conn) endedBy(causes ...error) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Contains(causes, c.cause.by)
}

// closeWith records why and performs the close handshake, bounded by
// coder/websocket (and by Shutdown's deadline, which aborts), unless the
// connection is closed already. Shutdown uses it rather than
// closeBounded, whose bound would also run while the close frame waits
// behind a large message to a slow reader.
func (c *Conn) closeWith(by error, code websocket.StatusCode, reason string) error {
	if c.nc.isClosed() {
		return nil
	}
	c.record(by, code, reason)
	return c.Conn.Close(code, reason)
}

// closeTimeout bounds the close handshakes the middleware performs when a
// handler ends its socket by fault or by returning: after its close frame, the server reads and
// discards what the peer still sends until the peer's close frame, so that
// the close code reaches a peer that was still sending (closing at once
// would make the kernel answer it with a reset), but no longer than this.
const closeTimeout = time.Second

// closeBounded performs the close handshake, and aborts the connection if
// the peer has not completed it within closeTimeout. It records by first,
// unless by is nil.
func (c *Conn) closeBounded(by error, code websocket.StatusCode, reason string) error {
	if c.nc.isClosed() {
		return nil
	}
	if by != nil {
		c.record(by, code, reason)
	}
	aborted := make(chan struct{})
	t := time.AfterFunc(closeTimeout, func() { // owned by closeBounded, which waits for it
		defer close(aborted)
		c.abort()
	})
	err := c.Conn.Close(code, reason)
	if !t.Stop() {
		<-aborted
	}
	return err
}

// abort closes the connection without a handshake. The network connection
// is closed first: coder/websocket's CloseNow waits for a close handshake
// in progress, which a silent peer would hold for seconds.
func (c *Conn) abort() {
	_ = c.nc.abort()
	_ = c.Conn.CloseNow()
}

// holdEnd and releaseEnd bracket a read through Conn, and a keep-alive
// ping. coder/websocket closes the connection when it reads the peer's
// close frame, before the read returns the close code, and when a ping's
// write times out, before Ping returns: the socket's end waits for them,
// so that its cause says what happened.
func (c *Conn) holdEnd() { c.holds.Add(1) }

func (c *Conn) releaseEnd() {
	if c.holds.Add(-1) == downBit && c.over.CompareAndSwap(false, true) {
		c.ending()
	}
}

// connClosed runs once, when the network connection closes, in the
// goroutine that closed it. The socket ends now, or when the reads and
// pings in progress return (see holdEnd).
func (c *Conn) connClosed() {
	c.mu.Lock()
	c.end = time.Now()
	c.mu.Unlock()
	if c.holds.Add(downBit) == downBit && c.over.CompareAndSwap(false, true) {
		c.ending()
	}
}

// ending ends the socket, once: it stops the keep-alive, takes the socket
// out of the registry, and then cancels the Context with the cause, so
// that when Done fires, Stats no longer counts the socket.
func (c *Conn) ending() {
	c.record(ErrConnectionLost, websocket.StatusAbnormalClosure, "")
	c.hb.stop()
	registered := c.m.unregister(c)
	c.cancel(&c.cause) // never written again: record refuses
	if registered {
		c.m.goroutines.Done() // last: see Middleware.goroutines
	}
}

// logClose writes the close log once, after the connection closed; with
// extra logged first under the same lock (see upgrade.finish). It holds
// c.mu while writing, so that Shutdown, which may write it in the
// handler's stead, never returns while it is being written.
func (c *Conn) logClose(extra func()) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.logged {
		return
	}
	c.logged = true
	if extra != nil {
		extra()
	}
	ce := c.m.cfg.log.Check(zap.DebugLevel, "websocket closed")
	if ce == nil {
		return
	}
	cause, end := c.cause, c.end
	if cause.by == nil { // Shutdown gave up on a socket still closing
		cause = closeCause{by: ErrShuttingDown, code: websocket.StatusAbnormalClosure}
	}
	if end.IsZero() {
		end = time.Now()
	}
	ce.Write(append(requestFields(c.req),
		zap.Int(keyCloseCode, int(cause.code)),
		zap.String(keyCloseReason, clip(cause.reason)),
		zap.String(keyClosedBy, closedBy[cause.by]),
		zap.Duration(keyDuration, end.Sub(c.start)),
		zap.Uint64(keyMessagesIn, c.msgsIn.Load()),
		zap.Uint64(keyMessagesOut, c.msgsOut.Load()),
		zap.Int64(keyBytesIn, c.nc.bytesIn.Load()),
		zap.Int64(keyBytesOut, c.nc.bytesOut.Load()),
	)...)
}
