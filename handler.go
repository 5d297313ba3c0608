package chiws

import (
	"context"
	"fmt"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
	"go.uber.org/zap"
)

// This file is an upgrade request's path through the route: the request is
// marked, the route handler runs and may Accept, and when the handler
// returns (or panics) the socket it accepted is closed and logged.

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

// handler is the http.Handler returned by Middleware.Handler.
type handler struct {
	m    *Middleware
	next http.Handler
}

func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !isUpgradeAttempt(r) {
		h.next.ServeHTTP(w, r)
		return
	}
	m := h.m
	if !m.admit(w, r) {
		return
	}
	defer m.release()
	u := &upgrade{m: m}
	u.w.ResponseWriter = w
	r = r.WithContext(context.WithValue(r.Context(), upgradeKey, u))
	if isExtendedConnect(r) { // RFC 8441
		u.w.h2 = newH2Stream(w, r)
		defer u.w.h2.end() // after finish: the stream is done with w
		// Routes registered for GET receive it, as HTTP/1.1 upgrades.
		r.Method = http.MethodGet
	}
	defer u.finish(r)
	h.next.ServeHTTP(&u.w, r)
	if u.w.h2 != nil && !u.w.answered && u.accepted.Load() == nil {
		// net/http would answer 200, which RFC 8441 takes for an open
		// socket.
		httpError(w, http.StatusInternalServerError)
	}
}

// upgrade is an admitted upgrade request on its way through the route. It
// holds the socket's Conn and connection, so that an upgrade is one
// allocation.
type upgrade struct {
	m        *Middleware
	w        upgradeWriter
	called   atomic.Bool          // Accept was called
	accepted atomic.Pointer[Conn] // set once the socket is registered
	conn     Conn
	nc       netConn
}

type ctxKey struct{ name string }

func (k *ctxKey) String() string { return "chiws context key " + k.name }

// upgradeKey finds the *upgrade in a marked request's context.
var upgradeKey = &ctxKey{"upgrade"}

func upgradeFrom(ctx context.Context) *upgrade {
	u, _ := ctx.Value(upgradeKey).(*upgrade)
	return u
}

// Accept upgrades r to a WebSocket: an HTTP/1.1 upgrade is answered 101,
// an HTTP/2 extended CONNECT (RFC 8441) 200. The middleware must be
// mounted in front of the handler that calls it (ErrMiddlewareMissing
// otherwise). On error, Accept has already answered the request: 400 for
// ErrNotWebSocket, 500 for ErrMiddlewareMissing, 501 when no ResponseWriter
// below can hijack the connection, or flush the HTTP/2 stream
// (http.TimeoutHandler's cannot; the error wraps http.ErrNotSupported),
// 503 for ErrShuttingDown (Shutdown began while the handler ran; if it
// began during the handshake, the socket is closed with 1001 Going Away).
// A second call returns ErrAlreadyAccepted. The caller just returns.
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
	u := upgradeFrom(r.Context())
	if u == nil {
		// Ordinary requests are not marked (that would cost an allocation
		// on every request), so tell the two cases apart here.
		if status, _ := checkHandshake(r); isUpgradeAttempt(r) && status == 0 {
			httpError(w, http.StatusInternalServerError)
			return nil, fmt.Errorf("chiws: accept: %w", ErrMiddlewareMissing)
		}
		httpError(w, http.StatusBadRequest)
		return nil, fmt.Errorf("chiws: accept: %w", ErrNotWebSocket)
	}
	if u.called.Swap(true) {
		// Even after a failure: the first call answered the request or
		// spent the connection.
		return nil, fmt.Errorf("chiws: accept: %w", ErrAlreadyAccepted)
	}
	return u.accept(w, r, opts)
}

// socketOptions are the resolved options of one socket.
type socketOptions struct {
	ws                websocket.AcceptOptions
	interval, timeout time.Duration
	readLimit         int64
}

// socketOptions resolves the options of one socket. Without overrides they
// are the middleware's, shared: coder/websocket's Accept does not modify
// its options.
func (m *Middleware) socketOptions(opts *AcceptOptions) *socketOptions {
	if opts == nil {
		return &m.cfg.socket
	}
	o := m.cfg.socket
	o.ws.OnPingReceived, o.ws.OnPongReceived = opts.OnPingReceived, opts.OnPongReceived
	if opts.Subprotocols != nil {
		o.ws.Subprotocols = opts.Subprotocols
	}
	if opts.CompressionMode != websocket.CompressionDisabled {
		o.ws.CompressionMode = opts.CompressionMode
	}
	if opts.DisableCompression {
		o.ws.CompressionMode = websocket.CompressionDisabled
	}
	o.interval = orDisabled(opts.KeepAliveInterval, o.interval)
	o.timeout = orDisabled(opts.KeepAliveTimeout, o.timeout)
	if opts.ReadLimit > 0 {
		o.readLimit = opts.ReadLimit
	}
	return &o
}

func (u *upgrade) accept(w http.ResponseWriter, r *http.Request, opts *AcceptOptions) (*Conn, error) {
	m := u.m
	if ok, what := u.w.upgradable(); !ok {
		m.logMisconfigured(r, "websocket upgrade impossible: a ResponseWriter below the middleware cannot "+what, u.w.ResponseWriter)
		httpError(w, http.StatusNotImplemented)
		return nil, fmt.Errorf("chiws: accept: %T cannot %s: %w", u.w.ResponseWriter, what, http.ErrNotSupported)
	}
	if m.shuttingDown() {
		m.logReject(r, "shutting down", ErrShuttingDown.Error())
		w.Header().Set("Retry-After", "5")
		httpError(w, http.StatusServiceUnavailable)
		return nil, fmt.Errorf("chiws: accept: %w", ErrShuttingDown)
	}
	so := m.socketOptions(opts)
	c := &u.conn
	c.init(m, r)
	u.w.conn, u.w.nc = c, &u.nc
	u.w.direct = w == &u.w

	// The 101 response is written with the connection's write deadline,
	// which http.Server.WriteTimeout set when the request arrived.
	rc := http.NewResponseController(w)
	_ = rc.SetWriteDeadline(time.Time{})
	_ = rc.SetReadDeadline(time.Time{})

	wr := r // the request coder/websocket sees
	if u.w.h2 != nil {
		wr = h2UpgradeRequest(r)
	}
	wc, err := websocket.Accept(w, wr, &so.ws)
	if err != nil {
		m.logReject(r, "accept failed", err.Error())
		return nil, fmt.Errorf("chiws: accept: %w", err)
	}
	c.Conn = wc
	if !u.w.hijacked {
		// Someone hijacked past the middleware's writer: chiws would not
		// see the connection close, so the socket cannot be served.
		m.logMisconfigured(r, "websocket closed with 1011: "+ErrHijackBypassed.Error(), w)
		// The connection is not the middleware's to abort: coder/websocket
		// bounds this handshake itself.
		_ = wc.Close(websocket.StatusInternalError, "server misconfigured")
		return nil, fmt.Errorf("chiws: accept: %w", ErrHijackBypassed)
	}
	c.nc = u.w.nc
	c.start = time.Now()
	wc.SetReadLimit(so.readLimit)
	m.stats.accepted.Add(1)
	if !m.register(c) {
		// Shutdown began during the handshake: it does not know this
		// socket, so the close is bounded here, and not logged.
		_ = c.closeBounded(ErrShuttingDown, websocket.StatusGoingAway, "server shutting down")
		return nil, fmt.Errorf("chiws: accept: %w", ErrShuttingDown)
	}
	u.accepted.Store(c)
	c.startHeartbeat(so.interval, so.timeout)
	if ce := m.cfg.log.Check(zap.DebugLevel, "websocket accepted"); ce != nil {
		ce.Write(append(requestFields(r),
			zap.String(keyProto, r.Proto),
			zap.String(keySubprotocol, wc.Subprotocol()),
			zap.Bool(keyCompression, w.Header().Get("Sec-WebSocket-Extensions") != ""),
			zap.Duration(keyKeepAlive, so.interval),
			zap.Duration(keyKeepAliveTimeout, so.timeout),
			zap.Int64(keyReadLimit, so.readLimit),
		)...)
	}
	return c, nil
}

func (m *Middleware) logMisconfigured(r *http.Request, msg string, w http.ResponseWriter) {
	m.cfg.log.Error(msg, append(requestFields(r), zap.String(keyWriter, fmt.Sprintf("%T", w)))...)
}

// finish runs when the route handler returns or panics (the middleware
// defers it). It enforces the rule that a handler owns its socket until the
// socket is closed, turns a panic after Accept into a 1011 close, and
// writes the close log once the connection is closed.
func (u *upgrade) finish(r *http.Request) {
	c := u.accepted.Load()
	if c == nil {
		return // not accepted: a panic is the caller's Recoverer's business
	}
	m := u.m
	p := recover()
	var early bool
	switch {
	case p == http.ErrAbortHandler:
		// net/http's sentinel for "abort quietly": close and re-panic
		// below, as chi's Recoverer expects.
		c.record(ErrHandlerPanicked, websocket.StatusAbnormalClosure, "")
		c.abort()
	case p != nil:
		m.stats.panics.Add(1)
		m.cfg.log.Error("websocket handler panicked; closing with 1011",
			append(requestFields(r), zap.Any(keyPanic, p), zap.Stack(keyStack))...)
		_ = c.closeBounded(ErrHandlerPanicked, websocket.StatusInternalError, "internal error")
	case c.nc.isClosed():
	case c.sawEnd.Load() && c.endedBy(ErrClosedByPeer, ErrConnectionLost):
		// The peer's close frame was answered, or the connection broke:
		// there is no handshake left to wait for.
		_ = c.Conn.CloseNow()
	case c.sawEnd.Load():
		// The handler saw its socket end; finish the close handshake
		// that coder/websocket began (1009 over the read limit, say).
		_ = c.closeBounded(ErrConnectionLost, websocket.StatusNormalClosure, "")
	default:
		// The handler returned with the socket open, unless
		// coder/websocket failed it in a read the middleware does not see
		// (wsjson through the embedded Conn): its close frame is out then,
		// and the peer's answer carries the code coder/websocket sends for
		// a fault, not 1011. The socket's end is held until the cause is
		// known, so that Conn.Context and the log agree.
		c.holdEnd()
		err := c.closeBounded(nil, websocket.StatusInternalError, "handler returned")
		// coder/websocket sends 1002 itself when the peer breaks the
		// protocol, 1009 for a message over the read limit, and 1008 for
		// a data message after CloseRead.
		code := websocket.CloseStatus(err)
		early = code != websocket.StatusProtocolError && code != websocket.StatusMessageTooBig &&
			code != websocket.StatusPolicyViolation
		if early {
			c.record(ErrHandlerReturned, websocket.StatusInternalError, "handler returned")
		} else {
			c.record(ErrClosedByServer, code, "")
		}
		c.releaseEnd()
	}
	if !c.nc.isClosed() {
		c.abort() // a close above failed half-way
	}
	<-c.Done() // connClosed has run, in whichever goroutine closed
	if early {
		m.stats.earlyReturns.Add(1)
	}
	c.logClose(func() {
		if early {
			m.cfg.log.Warn("websocket handler returned with the socket open; closed with 1011 "+
				"(call Conn.Wait to hand the socket to another goroutine)", requestFields(r)...)
		}
	})
	if p == http.ErrAbortHandler {
		panic(p)
	}
}
