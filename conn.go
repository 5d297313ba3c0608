package chiws

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/coder/websocket"
)

// Conn is an accepted WebSocket. It embeds *websocket.Conn, so all of
// coder/websocket's API works on it, and adds the socket's lifecycle:
// Done, Wait, Context, and why it ended.
//
// Read, Reader, Write, Writer, ReadJSON, WriteJSON, CloseRead, Close and
// CloseNow go through Conn, which is how it knows why the socket ended.
// Calls on the embedded c.Conn (and wsjson, which takes it) bypass that:
// a close frame or a broken connection they see is recorded as
// ErrConnectionLost, and a close they make as ErrConnectionLost too.
type Conn struct {
	*websocket.Conn

	m      *Middleware
	req    reqInfo  // the request given to Accept, for logs
	nc     *netConn // the hijacked connection
	hb     heartbeat
	ctx    context.Context
	cancel context.CancelCauseFunc
	start  time.Time

	msgsIn, msgsOut atomic.Uint64

	// wmu is the writer: held for a message written through Conn, and by
	// the close handshake, so that a close frame never waits behind a
	// message (see shut).
	wmu chan struct{}

	// rd and wr wrap the io.Reader and io.WriteCloser of Reader and
	// Writer; one of each at a time per socket (coder/websocket's rule),
	// so they are reused.
	rd msgReader
	wr msgWriter

	closeReadOnce sync.Once
	closeReadCtx  context.Context

	end socketEnd // see end.go
}

// init prepares the Conn of an upgrade request, before the handshake: its
// connection and websocket.Conn are set by Accept.
func (c *Conn) init(m *Middleware, r *http.Request) {
	c.m, c.req = m, newReqInfo(r)
	// The request's values without its deadline or cancellation: chi's
	// Timeout middleware must not end sockets.
	c.ctx, c.cancel = context.WithCancelCause(context.WithoutCancel(r.Context()))
	c.wmu = make(chan struct{}, 1)
	c.rd.c, c.wr.c = c, c
}

// Done returns a channel closed once the socket has ended: its network
// connection is closed, whoever closed it, and Context's cause says why.
// It is c.Context().Done().
func (c *Conn) Done() <-chan struct{} { return c.ctx.Done() }

// Wait blocks until the socket has ended (it returns nil) or ctx is done
// (it returns ctx.Err() and leaves the socket open). It is the Go form of
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
// cancelled when the socket ends, and context.Cause then says why: an error
// that matches exactly one of ErrClosedByPeer, ErrClosedByServer,
// ErrKeepAliveTimeout, ErrShuttingDown, ErrHandlerReturned,
// ErrHandlerPanicked or ErrConnectionLost with errors.Is (and the cause
// given to CloseWith), and carries the close code that went on the wire
// when one did (websocket.CloseStatus).
func (c *Conn) Context() context.Context { return c.ctx }

// opErr wraps what an operation refused without touching the socket.
func opErr(op string, err error) error { return fmt.Errorf("chiws: %s: %w", op, err) }

// Read reads a whole message; see websocket.Conn.Read. A text message that
// is not valid UTF-8 closes the socket with 1007 Invalid Frame Payload Data
// (RFC 6455 section 8.1: coder/websocket leaves the check to the caller).
// A ctx already done fails without touching the socket; a ctx that ends
// while the read waits closes it, as coder/websocket does.
func (c *Conn) Read(ctx context.Context) (websocket.MessageType, []byte, error) {
	if err := ctx.Err(); err != nil {
		return 0, nil, opErr("read", err)
	}
	c.begin()
	typ, p, err := c.Conn.Read(ctx)
	if err == nil && typ == websocket.MessageText && !utf8.Valid(p) {
		return typ, nil, c.refuse(websocket.StatusInvalidFramePayloadData, "invalid UTF-8")
	}
	if err == nil {
		c.msgsIn.Add(1)
	}
	c.release(err, "read")
	return typ, p, err
}

// refuse ends a read that returned a message the server refuses, by
// closing the socket with code, and returns the error for the reader.
func (c *Conn) refuse(code websocket.StatusCode, reason string) error {
	c.decide(ErrClosedByServer, code, reason)
	c.release(nil, "read")
	_ = c.shut(nil, code, reason)
	return opErr("read", websocket.CloseError{Code: code, Reason: reason})
}

// Reader returns a reader for the next message; see websocket.Conn.Reader.
// Text messages read this way are not checked for UTF-8.
func (c *Conn) Reader(ctx context.Context) (websocket.MessageType, io.Reader, error) {
	if err := ctx.Err(); err != nil {
		return 0, nil, opErr("read", err)
	}
	c.begin()
	typ, rd, err := c.Conn.Reader(ctx)
	if err == nil {
		c.msgsIn.Add(1)
		c.rd.r = rd
	}
	c.release(err, "read")
	if err != nil {
		return typ, nil, err
	}
	return typ, &c.rd, nil
}

// msgReader sees the errors of a message read through Conn.Reader (a
// message over the read limit fails there, not in Reader).
type msgReader struct {
	r io.Reader
	c *Conn
}

func (r *msgReader) Read(p []byte) (int, error) {
	r.c.begin()
	n, err := r.r.Read(p)
	if err == io.EOF {
		r.c.release(nil, "read")
	} else {
		r.c.release(err, "read")
	}
	return n, err
}

// lockWriter takes the socket's writer, unless ctx ends first (the socket
// is untouched then) or the socket ended.
func (c *Conn) lockWriter(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return opErr("write", err)
	}
	select {
	case c.wmu <- struct{}{}:
		return nil
	case <-ctx.Done():
		return opErr("write", ctx.Err())
	case <-c.ctx.Done():
		return opErr("write", net.ErrClosed)
	}
}

// Write writes a whole message; see websocket.Conn.Write. A ctx that ends
// while another message is being written fails without touching the
// socket; one that ends while this message is written closes it, as
// coder/websocket does.
func (c *Conn) Write(ctx context.Context, typ websocket.MessageType, p []byte) error {
	if err := c.lockWriter(ctx); err != nil {
		return err
	}
	c.begin()
	err := c.Conn.Write(ctx, typ, p)
	<-c.wmu
	if err == nil {
		c.msgsOut.Add(1)
	}
	c.release(err, "write")
	return err
}

// Writer returns a writer for the next message; see websocket.Conn.Writer.
// The socket's writer is held until it is closed: close it.
func (c *Conn) Writer(ctx context.Context, typ websocket.MessageType) (io.WriteCloser, error) {
	if err := c.lockWriter(ctx); err != nil {
		return nil, err
	}
	c.begin()
	wr, err := c.Conn.Writer(ctx, typ)
	if err != nil {
		<-c.wmu
		c.release(err, "write")
		return nil, err
	}
	c.release(nil, "write")
	c.wr.w, c.wr.closed = wr, false
	return &c.wr, nil
}

// msgWriter is the writer returned by Conn.Writer; its Close releases the
// socket's writer, once.
type msgWriter struct {
	w      io.WriteCloser
	c      *Conn
	closed bool
}

func (w *msgWriter) Write(p []byte) (int, error) {
	w.c.begin()
	n, err := w.w.Write(p)
	w.c.release(err, "write")
	return n, err
}

func (w *msgWriter) Close() error {
	if w.closed {
		return w.w.Close() // coder/websocket's error for a second Close
	}
	w.closed = true
	w.c.begin()
	err := w.w.Close()
	<-w.c.wmu
	if err == nil {
		w.c.msgsOut.Add(1)
	}
	w.c.release(err, "write")
	return err
}

// ReadJSON reads a text message and unmarshals it into v, through Conn (so
// a close by the peer is recorded as such). As wsjson.Read does, a binary
// message closes the socket with 1003, and invalid JSON with 1007.
func (c *Conn) ReadJSON(ctx context.Context, v any) error {
	typ, p, err := c.Read(ctx)
	switch {
	case err != nil:
		return err
	case typ != websocket.MessageText:
		c.begin()
		return c.refuse(websocket.StatusUnsupportedData, "expected a text message")
	}
	if err := json.Unmarshal(p, v); err != nil {
		c.begin()
		_ = c.refuse(websocket.StatusInvalidFramePayloadData, "invalid JSON")
		return opErr("read JSON", err)
	}
	return nil
}

// WriteJSON marshals v and writes it as a text message, through Conn.
func (c *Conn) WriteJSON(ctx context.Context, v any) error {
	p, err := json.Marshal(v)
	if err != nil {
		return opErr("write JSON", err)
	}
	return c.Write(ctx, websocket.MessageText, p)
}

// CloseRead starts a goroutine that reads the socket for a handler that
// only writes, so that pongs and the peer's close frame are processed; see
// websocket.Conn.CloseRead. It reads through Conn, so the peer's close
// code reaches Context's cause and the close log. A data message closes
// the socket with 1008 Policy Violation. The returned context is cancelled
// when the socket closes. It is idempotent: later calls return the first
// call's context. The goroutine is the socket's: it ends when the socket
// closes.
func (c *Conn) CloseRead(ctx context.Context) context.Context {
	c.closeReadOnce.Do(func() {
		ctx, cancel := context.WithCancel(ctx)
		c.closeReadCtx = ctx
		go func() { // ends when the socket closes, which fails its read
			defer cancel()
			if _, _, err := c.Reader(ctx); err == nil {
				_ = c.Close(websocket.StatusPolicyViolation, "unexpected data message")
			}
		}()
	})
	return c.closeReadCtx
}
