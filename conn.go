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
// Done, Wait, Context, and why it ended. Conn knows why through its own
// methods: calls on the embedded c.Conn (and wsjson, which takes it) are
// not seen, and an end they cause is recorded as a lost connection or,
// once the handler returns, as an early return.
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

	// wmu is held for a message, fmu for each frame (after wmu) and by the
	// close handshake, whose frame may go between a message's frames:
	// lock order wmu, fmu.
	wmu, fmu chan struct{}

	// rd and wr wrap Reader's and Writer's, one at a time (coder's rule).
	rd msgReader
	wr msgWriter

	closeReadOnce sync.Once
	closeReadCtx  context.Context
	end           socketEnd // see end.go
}

// init prepares the Conn before the handshake; Accept sets the rest.
func (c *Conn) init(m *Middleware, r *http.Request) {
	c.m, c.req = m, newReqInfo(r)
	// Without the request's deadline: chi's Timeout must not end sockets.
	c.ctx, c.cancel = context.WithCancelCause(context.WithoutCancel(r.Context()))
	c.wmu, c.fmu = make(chan struct{}, 1), make(chan struct{}, 1)
	c.rd.c, c.wr.c = c, c
}

// Done returns c.Context().Done(), closed once the socket has ended, its
// connection closed by whoever, with Context's cause set.
func (c *Conn) Done() <-chan struct{} { return c.ctx.Done() }

// Wait blocks until the socket has ended (nil) or ctx is done (ctx.Err(),
// the socket left open): ASP.NET Core's TaskCompletionSource pattern, for
// a handler that gives the socket to another goroutine. Pass
// context.Background() or c.Context(), not one that expires with the request.
func (c *Conn) Wait(ctx context.Context) error {
	select {
	case <-c.ctx.Done():
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Context returns a context with the request's values but not its deadline
// or cancellation, cancelled when the socket ends. context.Cause then
// matches exactly one of the Err sentinels of a socket's end (and
// CloseWith's cause) with errors.Is, and carries the close code that went
// on the wire, if one did (websocket.CloseStatus).
func (c *Conn) Context() context.Context { return c.ctx }

func opErr(op string, err error) error { return fmt.Errorf("chiws: %s: %w", op, err) }

// startRead refuses a done ctx (coder/websocket would pick at random).
func (c *Conn) startRead(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return opErr("read", err)
	}
	c.begin()
	return nil
}

// Read reads a whole message; see websocket.Conn.Read. Text that is not
// UTF-8 closes the socket with 1007 (RFC 6455 8.1; coder/websocket leaves
// the check to the caller). A ctx done already fails without touching the
// socket; one that ends while the read waits closes it, as in coder.
func (c *Conn) Read(ctx context.Context) (websocket.MessageType, []byte, error) {
	if err := c.startRead(ctx); err != nil {
		return 0, nil, err
	}
	typ, p, err := c.Conn.Read(ctx)
	if err == nil && typ == websocket.MessageText && !utf8.Valid(p) {
		return typ, nil, c.refuse(websocket.StatusInvalidFramePayloadData, "invalid UTF-8")
	}
	if err == nil {
		c.msgsIn.Add(1)
	}
	c.release(ctx, err, "read")
	return typ, p, err
}

func (c *Conn) refuse(code websocket.StatusCode, reason string) error {
	c.release(nil, nil, "read")
	_ = c.shut(ErrClosedByServer, code, reason)
	c.awaitEnd()
	return opErr("read", websocket.CloseError{Code: code, Reason: reason})
}

// Reader returns a reader for the next message; see websocket.Conn.Reader.
// Text messages read this way are not checked for UTF-8.
func (c *Conn) Reader(ctx context.Context) (websocket.MessageType, io.Reader, error) {
	if err := c.startRead(ctx); err != nil {
		return 0, nil, err
	}
	typ, rd, err := c.Conn.Reader(ctx)
	if err == nil {
		c.msgsIn.Add(1)
		c.rd.r, c.rd.ctx, c.rd.eof = rd, ctx, false
	}
	c.release(ctx, err, "read")
	if err != nil {
		return typ, nil, err
	}
	return typ, &c.rd, nil
}

// msgReader sees a message's errors (the read limit fails there).
type msgReader struct {
	r   io.Reader
	c   *Conn
	ctx context.Context
	eof bool
}

func (r *msgReader) Read(p []byte) (int, error) {
	if r.eof {
		return 0, io.EOF
	}
	if err := r.ctx.Err(); err != nil {
		// Mid-message: the rest would be read as frames. Close, as coder
		// would, but surely and now.
		_ = r.c.abort(ErrClosedByServer, "read context done")
		r.c.awaitEnd()
		return 0, opErr("read", err)
	}
	r.c.begin()
	n, err := r.r.Read(p)
	r.eof = err == io.EOF
	r.c.release(r.ctx, err, "read")
	return n, err
}

// lock takes mu unless ctx or the socket ends first.
func (c *Conn) lock(ctx context.Context, mu chan struct{}) error {
	if err := ctx.Err(); err != nil {
		return opErr("write", err)
	}
	select {
	case mu <- struct{}{}: // uncontended: no three-way select
		return nil
	default:
	}
	select {
	case mu <- struct{}{}:
		return nil
	case <-ctx.Done():
		return opErr("write", ctx.Err())
	case <-c.ctx.Done():
		return opErr("write", net.ErrClosed)
	}
}

// Write writes a whole message; see websocket.Conn.Write. A ctx that ends
// while waiting for the writer leaves the socket untouched; one that ends
// while this message is written closes it, as in coder/websocket.
func (c *Conn) Write(ctx context.Context, typ websocket.MessageType, p []byte) error {
	if err := c.lock(ctx, c.wmu); err != nil {
		return err
	}
	if err := c.lock(ctx, c.fmu); err != nil {
		<-c.wmu
		return err
	}
	c.begin()
	err := c.Conn.Write(ctx, typ, p)
	<-c.fmu
	<-c.wmu
	if err == nil {
		c.msgsOut.Add(1)
	}
	c.release(ctx, err, "write")
	return err
}

// Writer returns a writer for the next message (see websocket.Conn.Writer),
// holding the socket's writer until closed; a ctx that ends before the
// message does closes the socket.
func (c *Conn) Writer(ctx context.Context, typ websocket.MessageType) (io.WriteCloser, error) {
	if err := c.lock(ctx, c.wmu); err != nil {
		return nil, err
	}
	c.begin()
	wr, err := c.Conn.Writer(ctx, typ)
	if err != nil {
		<-c.wmu
		c.release(ctx, err, "write")
		return nil, err
	}
	c.release(nil, nil, "write")
	c.wr.w, c.wr.ctx, c.wr.closed = wr, ctx, false
	return &c.wr, nil
}

type msgWriter struct {
	w      io.WriteCloser
	c      *Conn
	ctx    context.Context
	closed bool
}

func (w *msgWriter) Write(p []byte) (n int, err error) {
	err = w.frame(func() (err error) { n, err = w.w.Write(p); return err })
	return n, err
}

func (w *msgWriter) Close() error {
	if w.closed {
		return w.w.Close() // coder/websocket's error for a second Close
	}
	err := w.frame(w.w.Close)
	if err == nil {
		w.c.msgsOut.Add(1)
	}
	w.free()
	return err
}

// frame runs one call into the message writer under fmu. A failure frees
// the writer; a ctx that ended leaves the message broken mid-way, so the
// socket is aborted, as coder/websocket may do, but surely.
func (w *msgWriter) frame(f func() error) error {
	err := w.c.lock(w.ctx, w.c.fmu)
	if err == nil {
		w.c.begin()
		err = f()
		<-w.c.fmu
		w.c.release(w.ctx, err, "write")
	}
	if err != nil {
		w.free()
	}
	if err != nil && w.ctx.Err() != nil && !w.c.nc.isClosed() {
		_ = w.c.abort(ErrClosedByServer, "write context done")
		w.c.awaitEnd()
	}
	return err
}

func (w *msgWriter) free() {
	if !w.closed {
		w.closed = true
		<-w.c.wmu
	}
}

// ReadJSON reads a text message into v, through Conn. As wsjson.Read
// does, a binary message closes the socket with 1003, invalid JSON 1007.
func (c *Conn) ReadJSON(ctx context.Context, v any) error {
	typ, p, err := c.Read(ctx)
	if err != nil {
		return err
	}
	c.begin() // for refuse
	if typ != websocket.MessageText {
		return c.refuse(websocket.StatusUnsupportedData, "expected a text message")
	}
	if err := json.Unmarshal(p, v); err != nil {
		_ = c.refuse(websocket.StatusInvalidFramePayloadData, "invalid JSON")
		return opErr("read JSON", err)
	}
	c.release(nil, nil, "read")
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

// CloseRead starts a goroutine that reads the socket, through Conn, for a
// handler that only writes, so that pongs and the peer's close frame are
// processed; see websocket.Conn.CloseRead. A data message closes the
// socket with 1008. The returned context is cancelled when the socket
// closes; later calls return the first call's. The goroutine ends when
// the socket closes.
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
