package chiws

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/coder/websocket"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// AcceptOptions overrides the middleware's Options for one socket. A nil
// *AcceptOptions, and every zero field, means "as the middleware says".
type AcceptOptions struct {
	// Subprotocols replaces Options.Subprotocols: the server's supported
	// subprotocols in order of preference. Accept selects the first one the
	// client requested (see RequestedProtocols); when none matches, the
	// socket has no subprotocol (Conn.Subprotocol returns "").
	Subprotocols []string

	// KeepAliveInterval and KeepAliveTimeout replace the Options fields of
	// the same names: zero inherits, negative disables.
	KeepAliveInterval time.Duration
	KeepAliveTimeout  time.Duration

	// CompressionMode, when not websocket.CompressionDisabled, replaces
	// Options.CompressionMode. See the CRIME/BREACH warning there.
	CompressionMode websocket.CompressionMode

	// DisableCompression turns compression off for this socket even when
	// Options.CompressionMode enables it.
	DisableCompression bool

	// ReadLimit, when positive, replaces Options.ReadLimit.
	ReadLimit int64

	// OnPingReceived and OnPongReceived are passed to coder/websocket. They
	// run synchronously in the goroutine reading the socket and must not
	// block. Keep-alive works whether or not they are set.
	OnPingReceived func(ctx context.Context, payload []byte) bool
	OnPongReceived func(ctx context.Context, payload []byte)
}

var defaultAcceptOptions AcceptOptions // read-only

// Accept upgrades r to a WebSocket. The middleware must be mounted in front
// of the handler that calls it (ErrMiddlewareMissing otherwise). On error,
// Accept has already answered the request: 400 for ErrNotWebSocket, 500
// for ErrMiddlewareMissing. ErrShuttingDown means Shutdown began while the
// handler ran: the upgrade went through and the socket was then closed
// with 1001 Going Away. The caller just returns.
//
// The handler must not return until it is done with the socket: read until
// an error, or hand the Conn to another goroutine and call Conn.Wait. If it
// returns while the socket is open, the middleware closes the socket with
// 1011 and logs a warning.
//
// Accept clears the connection's read and write deadlines first, so that a
// slow handler (authentication, say) that outlived http.Server.WriteTimeout
// still gets its 101 Switching Protocols to the client.
func Accept(w http.ResponseWriter, r *http.Request, opts *AcceptOptions) (*Conn, error) {
	s := socketFrom(r.Context())
	if s == nil {
		// Ordinary requests are not marked (that would cost an allocation
		// on every request), so tell the two cases apart here.
		if hs := checkHandshake(r); hs.attempt && hs.status == 0 {
			httpError(w, http.StatusInternalServerError)
			return nil, fmt.Errorf("chiws: accept: %w", ErrMiddlewareMissing)
		}
		httpError(w, http.StatusBadRequest)
		return nil, fmt.Errorf("chiws: accept: %w", ErrNotWebSocket)
	}
	return s.accept(w, r, opts)
}

// Conn is an accepted WebSocket. It embeds *websocket.Conn, so all of
// coder/websocket's API works on it (and c.Conn can be passed to wsjson),
// and adds the socket's lifecycle: Done, Wait and Context.
//
// Read, Reader, Write and Writer are wrapped only to count messages for
// the close log; calls made on the embedded c.Conn work the same but are
// counted in bytes only.
type Conn struct {
	*websocket.Conn
	s *socket
}

// Done returns a channel closed once the socket's network connection is
// closed, whoever closed it: the handler, the peer, a protocol error, the
// keep-alive or Shutdown.
func (c *Conn) Done() <-chan struct{} { return c.s.doneChan() }

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
	case <-c.s.doneChan():
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Context returns a context that carries the request's values (chi's route
// context, request ID, authentication...) but not its deadline or
// cancellation, so chi's Timeout middleware does not kill sockets. It is
// cancelled when the socket closes, which includes Middleware.Shutdown.
func (c *Conn) Context() context.Context { return (*connContext)(c.s) }

// Close performs the WebSocket close handshake with code and reason and
// closes the connection. See websocket.Conn.Close.
func (c *Conn) Close(code websocket.StatusCode, reason string) error {
	c.s.setClose(code, reason, closedByServer)
	err := c.Conn.Close(code, reason)
	c.s.markClosed()
	return err
}

// CloseNow closes the connection without a close handshake.
func (c *Conn) CloseNow() error {
	c.s.setClose(websocket.StatusAbnormalClosure, "", closedByServer)
	err := c.Conn.CloseNow()
	c.s.markClosed()
	return err
}

// Read reads a whole message; see websocket.Conn.Read. A text message that
// is not valid UTF-8 closes the socket with 1007 Invalid Frame Payload Data
// (RFC 6455 section 8.1: coder/websocket leaves the check to the caller) and
// returns an error.
func (c *Conn) Read(ctx context.Context) (websocket.MessageType, []byte, error) {
	typ, p, err := c.Conn.Read(ctx)
	if err == nil && typ == websocket.MessageText && !utf8.Valid(p) {
		c.s.readFailed.Store(true)
		c.s.closeWith(websocket.StatusInvalidFramePayloadData, "invalid UTF-8", closedByServer)
		return typ, nil, errInvalidUTF8
	}
	c.s.countRead(err)
	return typ, p, err
}

// errInvalidUTF8 is returned by Read for a text message that is not UTF-8.
var errInvalidUTF8 = errors.New("chiws: read: text message is not valid UTF-8; closed with 1007")

// Reader returns a reader for the next message; see websocket.Conn.Reader.
// Text messages read this way are not checked for UTF-8.
func (c *Conn) Reader(ctx context.Context) (websocket.MessageType, io.Reader, error) {
	typ, rd, err := c.Conn.Reader(ctx)
	c.s.countRead(err)
	if err != nil {
		return typ, rd, err
	}
	// One reader at a time per socket (coder/websocket's rule), so the
	// wrapper is reused: no allocation per message.
	c.s.rd.r = rd
	return typ, &c.s.rd, nil
}

// msgReader sees the errors of a message read through Conn.Reader (a
// message over ReadLimit fails there, not in Reader).
type msgReader struct {
	r io.Reader
	s *socket
}

func (r *msgReader) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	if err != nil && err != io.EOF {
		r.s.countRead(err)
	}
	return n, err
}

// Write writes a whole message; see websocket.Conn.Write.
func (c *Conn) Write(ctx context.Context, typ websocket.MessageType, p []byte) error {
	err := c.Conn.Write(ctx, typ, p)
	if err == nil {
		c.s.msgsOut.Add(1)
	} else {
		c.s.readFailed.Store(true) // the socket is finished; see finish
	}
	return err
}

// Writer returns a writer for the next message; see websocket.Conn.Writer.
func (c *Conn) Writer(ctx context.Context, typ websocket.MessageType) (io.WriteCloser, error) {
	wr, err := c.Conn.Writer(ctx, typ)
	if err == nil {
		c.s.msgsOut.Add(1)
	} else {
		c.s.readFailed.Store(true)
	}
	return wr, err
}

// Who closed a socket, for the close log.
const (
	closedByNone closer = iota
	closedByServer
	closedByClient
	closedByKeepAlive
	closedByShutdown
	closedByReturn
	closedByPanic
	closedByError
)

// closer is who closed a socket; its String is the closedBy log field.
type closer uint8

func (c closer) String() string {
	return [...]string{"", "server", "client", "keepalive", "shutdown", "handler-return", "panic", "connection-lost"}[c]
}

// Socket states.
const (
	stateNew int32 = iota
	stateAccepting
	stateAccepted
)

// socket is everything chiws keeps for one upgrade request, in a single
// allocation: it is the request's context (so marking the request costs no
// extra context), the ResponseWriter wrapper, the hijacked connection
// wrapper, and the Conn returned by Accept.
type socket struct {
	context.Context // the request's context; see Value

	m    *Middleware
	w    upgradeWriter
	nc   netConn
	conn Conn
	// done holds the chan struct{} closed by markClosed, made on first
	// use (doneChan): many sockets never need one.
	done atomic.Value
	// reqCtx is the context of the request given to Accept, for
	// Conn.Context's values (see connContext.Value). Set by accept.
	reqCtx context.Context

	// r is the request handed to the route: the server's, with the
	// socket as its context.
	r http.Request

	// Set by accept, read-only afterwards.
	req               *http.Request
	start             time.Duration // monotime
	interval, timeout time.Duration

	prev, next *socket // Middleware.sockets, under Middleware.mu

	msgsIn, msgsOut atomic.Uint64

	// rd wraps the io.Reader returned by Conn.Reader.
	rd msgReader

	// The small fields are together, where their padding is shared: an
	// open socket is one allocation, kept in the 640-byte size class
	// (TestSocketSizeClass).
	state  atomic.Int32
	closed atomic.Bool
	// readFailed is set once a read failed: the socket is finished, and
	// the handler returning is not an early return.
	readFailed atomic.Bool
	// Keep-alive (heartbeat.go). kaWaiting is set under mu when a ping
	// starts, and cleared by netConn.Read (without mu: a load, then a
	// store, so a ping that starts in between may be taken as answered
	// and the detection of a dead peer slip by one interval) or by a pong.
	kaWaiting atomic.Bool
	pingState atomic.Int32

	mu sync.Mutex // guards the fields below, except the upgradeWriter's

	// upgradeWriter's state, owned by the handler's goroutine.
	hijacked, switching, direct bool

	kaPinging bool // keepAlive is in Ping
	closedBy  closer
	// afterFired: the callbacks registered by context.AfterFunc on
	// Conn.Context (afterFuncs) have run; see connContext.AfterFunc.
	afterFired  bool
	closeCode   int32 // a websocket.StatusCode
	afterFuncs  map[*func()]struct{}
	timer       *time.Timer
	kaSent      time.Duration // monotime when the last ping started
	kaOut       int64         // netConn's bytesOut when the last ping started
	pingDone    chan struct{}
	end         time.Duration // monotime
	closeReason string
}

type ctxKey struct{ name string }

func (k *ctxKey) String() string { return "chiws context key " + k.name }

// socketKey finds the *socket in a request context.
var socketKey = &ctxKey{"socket"}

// newSocket returns the socket for an upgrade request; s.r is the request
// to hand to the route. It is not inlined: WithContext's copy of the
// request is a temporary on its stack frame, which must not stay on
// ServeHTTP's for the socket's life (see handler).
//
//go:noinline
func newSocket(m *Middleware, w http.ResponseWriter, r *http.Request) *socket {
	s := &socket{Context: r.Context(), m: m}
	// The marked request lives in the socket: one allocation for both.
	s.r = *r.WithContext(s)
	s.w = upgradeWriter{ResponseWriter: w, s: s}
	s.nc.s = s
	s.rd.s = s
	s.closeCode = -1
	return s
}

// Value makes the socket findable from the request context without a
// context.WithValue allocation.
func (s *socket) Value(key any) any {
	if key == socketKey {
		return s
	}
	return s.Context.Value(key)
}

func socketFrom(ctx context.Context) *socket {
	s, _ := ctx.Value(socketKey).(*socket)
	return s
}

func (s *socket) accept(w http.ResponseWriter, r *http.Request, opts *AcceptOptions) (*Conn, error) {
	m := s.m
	if !s.state.CompareAndSwap(stateNew, stateAccepting) {
		return nil, fmt.Errorf("chiws: accept: %w", ErrAlreadyAccepted)
	}
	if opts == nil {
		opts = &defaultAcceptOptions
	}
	cfg := &m.cfg
	wsOpts := websocket.AcceptOptions{
		Subprotocols:         cfg.subprotocols,
		InsecureSkipVerify:   true, // the middleware applied the origin policy
		CompressionMode:      cfg.compression,
		CompressionThreshold: cfg.compressionThreshold,
		OnPingReceived:       opts.OnPingReceived,
		OnPongReceived:       opts.OnPongReceived,
	}
	if opts.Subprotocols != nil {
		wsOpts.Subprotocols = opts.Subprotocols
	}
	if opts.CompressionMode != websocket.CompressionDisabled {
		wsOpts.CompressionMode = opts.CompressionMode
	}
	if opts.DisableCompression {
		wsOpts.CompressionMode = websocket.CompressionDisabled
	}
	s.interval = pick(opts.KeepAliveInterval, cfg.keepAlive)
	s.timeout = pick(opts.KeepAliveTimeout, cfg.keepAliveTimeout)
	readLimit := cfg.readLimit
	if opts.ReadLimit > 0 {
		readLimit = opts.ReadLimit
	}

	// The 101 response is written with the connection's write deadline,
	// which http.Server.WriteTimeout set when the request arrived.
	s.direct = w == http.ResponseWriter(&s.w)
	rc := http.NewResponseController(w)
	_ = rc.SetWriteDeadline(time.Time{})
	_ = rc.SetReadDeadline(time.Time{})

	wc, err := websocket.Accept(w, r, &wsOpts)
	if err != nil {
		return nil, s.acceptFailed(r, err)
	}
	return s.accepted(w, r, wc, readLimit)
}

// acceptFailed and accepted are apart from accept to keep accept's stack
// frame small: it is on the stack while coder/websocket upgrades and the
// 101 is written, the deepest point of a socket's life (see
// upgradeWriter.WriteHeader and handler.ServeHTTP).
func (s *socket) acceptFailed(r *http.Request, err error) error {
	s.state.Store(stateNew)
	s.m.logReject(zap.DebugLevel, r, "accept failed", err.Error())
	return fmt.Errorf("chiws: accept: %w", err)
}

func (s *socket) accepted(w http.ResponseWriter, r *http.Request, wc *websocket.Conn, readLimit int64) (*Conn, error) {
	m := s.m
	wc.SetReadLimit(readLimit)
	s.conn = Conn{Conn: wc, s: s}
	s.req = r
	s.reqCtx = r.Context()
	s.start = monotime()
	if !s.nc.hijacked() {
		// A ResponseWriter between the middleware and Accept hijacked the
		// connection without going through ours: Done then only fires
		// when the socket is closed through Conn or the keep-alive.
		m.cfg.log.Warn("hijack bypassed the middleware's ResponseWriter; Conn.Done will not see peer closes",
			zap.String(keyRoute, routeOf(r)))
	}
	s.state.Store(stateAccepted)
	m.stats.accepted.Add(1)

	if !m.register(s) {
		s.closeWith(websocket.StatusGoingAway, "server shutting down", closedByShutdown)
		return nil, fmt.Errorf("chiws: accept: %w", ErrShuttingDown)
	}
	s.startKeepAlive()

	if ce := m.cfg.log.Check(zap.DebugLevel, "websocket accepted"); ce != nil {
		s.logAccepted(ce, w, readLimit)
	}
	return &s.conn, nil
}

// logAccepted writes the accept log. It is a separate function so that
// its zap fields do not enlarge accept's stack frame: the handler's
// goroutine would otherwise grow its stack on every upgrade and keep it
// for the life of the socket (see docs/benchmarks.md, idle footprint).
func (s *socket) logAccepted(ce *zapcore.CheckedEntry, w http.ResponseWriter, readLimit int64) {
	ce.Write(append(requestFields(s.req),
		zap.String(keySubprotocol, s.conn.Subprotocol()),
		zap.Bool(keyCompression, w.Header().Get("Sec-WebSocket-Extensions") != ""),
		zap.Duration(keyKeepAlive, s.interval),
		zap.Duration(keyKeepAliveTimeout, s.timeout),
		zap.Int64(keyReadLimit, readLimit),
	)...)
}

// pick resolves a per-socket duration override: zero inherits, negative
// disables (0).
func pick(override, inherited time.Duration) time.Duration {
	switch {
	case override == 0:
		return inherited
	case override < 0:
		return 0
	}
	return override
}

// setClose records why the socket closed; the first caller wins and gets
// true.
func (s *socket) setClose(code websocket.StatusCode, reason string, by closer) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closedBy != closedByNone {
		return false
	}
	s.closeCode, s.closeReason, s.closedBy = int32(code), reason, by
	return true
}

func (s *socket) countRead(err error) {
	if err == nil {
		s.msgsIn.Add(1)
		return
	}
	// The socket is finished for the handler (a close frame arrived, or
	// the read failed): a handler that returns now is not returning early,
	// even while a close handshake started elsewhere (Shutdown) has not
	// closed the connection yet (see finish).
	s.readFailed.Store(true)
	var ce websocket.CloseError
	if errors.As(err, &ce) {
		s.setClose(ce.Code, ce.Reason, closedByClient)
		return
	}
	switch {
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF),
		errors.Is(err, net.ErrClosed), errors.Is(err, context.Canceled),
		errors.Is(err, context.DeadlineExceeded):
		// Connection lost or closed, or the handler's own deadline.
	case errors.Is(err, websocket.ErrMessageTooBig):
		// coder/websocket has sent 1009.
		s.setClose(websocket.StatusMessageTooBig, "message too big", closedByServer)
	case strings.Contains(err.Error(), "received unmasked frame from client"):
		// coder/websocket reports this one without a close frame (the
		// other protocol errors get one): send the 1002 RFC 6455 asks for.
		s.closeWith(websocket.StatusProtocolError, "unmasked frame", closedByServer)
	default:
		// A protocol error: coder/websocket has sent 1002.
		s.setClose(websocket.StatusProtocolError, "protocol error", closedByServer)
	}
}

// closeWith closes the socket with a close handshake, unless it is closed.
func (s *socket) closeWith(code websocket.StatusCode, reason string, by closer) {
	if s.closed.Load() {
		return
	}
	s.setClose(code, reason, by)
	_ = s.conn.Conn.Close(code, reason)
	s.markClosed()
}

// abort closes the connection without a handshake. It closes the network
// connection itself first: coder/websocket's CloseNow only waits (up to
// 15 s) while a Close is in progress, and a peer that never answers the
// close frame would hold that Close (and Shutdown) for ten seconds.
func (s *socket) abort() {
	if s.nc.hijacked() {
		_ = s.nc.Close()
	}
	_ = s.conn.Conn.CloseNow()
	s.markClosed()
}

// markClosed runs once, when the network connection closes (see netConn)
// or when Conn's own close methods return.
func (s *socket) markClosed() {
	if !s.closed.CompareAndSwap(false, true) {
		return
	}
	s.mu.Lock()
	s.end = monotime()
	if s.timer != nil {
		s.timer.Stop()
	}
	s.mu.Unlock()
	s.m.unregister(s)
	s.mu.Lock()
	if d, _ := s.done.Load().(chan struct{}); d != nil {
		close(d)
	} else {
		s.done.Store(closedChan)
	}
	fs := s.afterFuncs
	s.afterFuncs, s.afterFired = nil, true
	s.mu.Unlock()
	for f := range fs {
		(*f)()
	}
}

// finish runs when the route handler returns (it is deferred by the
// middleware). It enforces the rule that a handler owns its socket until the
// socket is closed, and turns a panic after Accept into a 1011 close.
func (s *socket) finish(r *http.Request) {
	if s.state.Load() != stateAccepted {
		return // not accepted: a panic is the caller's Recoverer's business
	}
	m := s.m
	if p := recover(); p != nil {
		m.stats.panics.Add(1)
		m.cfg.log.Error("websocket handler panicked; closing with 1011",
			append(requestFields(r), zap.Any(keyPanic, p), zap.Stack(keyStack))...)
		s.closeWith(websocket.StatusInternalError, "internal error", closedByPanic)
	} else if !s.closed.Load() && !s.nc.connClosed.Load() && !s.readFailed.Load() && !s.closeFrameSent() {
		// connClosed: the connection is being closed (a write deadline,
		// the keep-alive) and markClosed has not run yet.
		m.stats.earlyReturns.Add(1)
		m.cfg.log.Warn("websocket handler returned with the socket open; closing with 1011 "+
			"(call Conn.Wait to hand the socket to another goroutine)", requestFields(r)...)
		s.closeWith(websocket.StatusInternalError, "handler returned", closedByReturn)
	}
	if !s.nc.connClosed.Load() {
		// A close above failed half-way, or the hijack bypassed netConn.
		// Skipped otherwise: a second CloseNow costs coder/websocket a
		// 15 s timer and a wrapped error, five allocations per socket.
		s.abort()
	}
	if ce := m.cfg.log.Check(zap.DebugLevel, "websocket closed"); ce != nil {
		s.mu.Lock()
		code, reason, by, end := websocket.StatusCode(s.closeCode), s.closeReason, s.closedBy, s.end
		s.mu.Unlock()
		if by == closedByNone {
			code, by = websocket.StatusAbnormalClosure, closedByError
		}
		ce.Write(append(requestFields(r),
			zap.Int(keyCloseCode, int(code)),
			zap.String(keyCloseReason, clip(reason)),
			zap.String(keyClosedBy, by.String()),
			zap.Duration(keyDuration, end-s.start),
			zap.Uint64(keyMessagesIn, s.msgsIn.Load()),
			zap.Uint64(keyMessagesOut, s.msgsOut.Load()),
			zap.Int64(keyBytesIn, s.nc.bytesIn.Load()),
			zap.Int64(keyBytesOut, s.nc.bytesOut.Load()),
		)...)
	}
}

// closeFrameSent reports whether coder/websocket has sent a close frame on
// the socket. It does so on a protocol error or a message over ReadLimit,
// also for reads made through the embedded *websocket.Conn (wsjson), which
// chiws does not see, so the handler that returns then is not returning
// early. coder/websocket writes nothing after a close frame, so a ping
// tells: net.ErrClosed means sent; on a socket still open, the probe is a
// harmless ping. It runs only when a handler returned with the socket
// apparently open.
func (s *socket) closeFrameSent() bool {
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	return errors.Is(s.conn.Conn.Ping(ctx), net.ErrClosed)
}

// doneChan returns the channel closed by markClosed.
func (s *socket) doneChan() <-chan struct{} {
	if d, _ := s.done.Load().(chan struct{}); d != nil {
		return d
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	d, _ := s.done.Load().(chan struct{})
	if d == nil {
		d = make(chan struct{})
		s.done.Store(d)
	}
	return d
}

// closedChan is the done channel of a socket closed before anyone asked.
var closedChan = func() chan struct{} {
	c := make(chan struct{})
	close(c)
	return c
}()

// epoch and monotime give the monotonic clock as a Duration: 8 bytes
// where a time.Time takes 24.
var epoch = time.Now()

func monotime() time.Duration { return time.Since(epoch) }

// connContext is the context returned by Conn.Context: the socket's
// lifetime with the request's values.
type connContext socket

func (c *connContext) Deadline() (time.Time, bool) { return time.Time{}, false }
func (c *connContext) Done() <-chan struct{}       { return (*socket)(c).doneChan() }
func (c *connContext) Err() error {
	d, _ := c.done.Load().(chan struct{})
	if d == nil {
		return nil // Done was never called and the socket is open
	}
	select {
	case <-d:
		return context.Canceled
	default:
		return nil
	}
}

// Value looks key up in the context of the request given to Accept,
// except the context package's own cancellation key: like
// context.WithoutCancel, but without an allocation per socket. Hiding it
// makes context.Cause on Conn.Context report the socket's end, not the
// request's (chi's Timeout middleware ends the request's context while
// the socket lives on).
func (c *connContext) Value(key any) any {
	if key == cancelCtxKey {
		return nil
	}
	return c.reqCtx.Value(key)
}

// cancelCtxKey is the key the context package looks up in a context to
// find its cancellation state (context.Cause asks for it first, and
// deriving a child context does too). It is unexported, so it is found
// once by asking context.Cause; TestCancelCtxKeyFound pins that.
var cancelCtxKey = func() any {
	p := &keyProbe{Context: context.Background()}
	_ = context.Cause(p)
	return p.key
}()

// keyProbe is a cancelled context that records the first key it is
// asked for (context.Cause asks only once Err is not nil).
type keyProbe struct {
	context.Context
	key any
}

func (p *keyProbe) Err() error { return context.Canceled }

func (p *keyProbe) Value(key any) any {
	if p.key == nil {
		p.key = key
	}
	return nil
}
func (c *connContext) String() string { return "chiws.Conn.Context" }

// AfterFunc is the method context.AfterFunc and context.WithCancel look
// for on a parent context they do not know. Without it, each of them
// starts a goroutine that waits for Done, and coder/websocket calls
// context.AfterFunc on every Read and Write: one goroutine per message.
// f runs synchronously when the socket closes, after Done is closed; the
// context package only registers functions that return quickly.
func (c *connContext) AfterFunc(f func()) (stop func() bool) {
	s := (*socket)(c)
	key := &f
	s.mu.Lock()
	if s.afterFired {
		s.mu.Unlock()
		go f() // as context.AfterFunc does for a done context
		return func() bool { return false }
	}
	if s.afterFuncs == nil {
		s.afterFuncs = make(map[*func()]struct{})
	}
	s.afterFuncs[key] = struct{}{}
	s.mu.Unlock()
	return func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		_, ok := s.afterFuncs[key]
		delete(s.afterFuncs, key)
		return ok
	}
}
