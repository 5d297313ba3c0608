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

// AcceptOptions overrides the middleware's Options for one socket. A nil
// *AcceptOptions, and every zero field, means "as the middleware says".
type AcceptOptions struct {
	// Subprotocols replaces Options.Subprotocols.
	Subprotocols []string

	// KeepAliveInterval and KeepAliveTimeout replace the Options fields of
	// the same names: zero inherits, negative disables.
	KeepAliveInterval, KeepAliveTimeout time.Duration

	// CompressionMode, when not websocket.CompressionDisabled, replaces
	// Options.CompressionMode (see the CRIME/BREACH warning there);
	// DisableCompression turns compression off for this socket.
	CompressionMode    websocket.CompressionMode
	DisableCompression bool

	ReadLimit int64 // when positive, replaces Options.ReadLimit

	// OnPingReceived and OnPongReceived go to coder/websocket: run in the
	// reading goroutine, they must not block.
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
	u := &upgrade{m: m}
	defer func() {
		if u.w.foreign {
			m.count(0, -1)
		}
		m.count(-1, 0)
	}()
	u.w.ResponseWriter, u.w.m = w, m
	r = r.WithContext(context.WithValue(r.Context(), upgradeKey, u))
	if isExtendedConnect(r) { // RFC 8441
		u.w.h2 = newH2Stream(w, r)
		defer u.w.h2.end() // after finish: the stream is done with w
		// Routes registered for GET receive it, as HTTP/1.1 upgrades.
		r.Method = http.MethodGet
	}
	defer u.finish(r)
	h.next.ServeHTTP(&u.w, r)
	u.returned = true
}

// upgrade is an admitted upgrade request on its way through the route,
// with the socket's Conn and connection: one allocation.
type upgrade struct {
	m        *Middleware
	w        upgradeWriter
	called   atomic.Bool          // Accept was called
	accepted atomic.Pointer[Conn] // set once the socket is registered
	returned bool                 // the route handler returned (did not panic)
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
// an HTTP/2 extended CONNECT (RFC 8441) 200, once the socket is set up.
// The middleware must be mounted in front of the handler. On error, Accept
// has answered the request (the caller just returns): 400 for
// ErrNotWebSocket, 500 for ErrMiddlewareMissing, 501 when no writer below
// can hijack the connection or flush the stream (http.TimeoutHandler's;
// the error wraps http.ErrNotSupported), 503 for ErrShuttingDown (1001 if
// the socket was open already). A second call returns ErrAlreadyAccepted.
//
// The handler owns the socket until it returns: read until an error, or
// hand the Conn to another goroutine and call Conn.Wait; a socket left open
// is closed with 1011 and logged. Accept clears the connection's deadlines
// first, for a slow handler that outlived http.Server.WriteTimeout.
func Accept(w http.ResponseWriter, r *http.Request, opts *AcceptOptions) (*Conn, error) {
	u := upgradeFrom(r.Context())
	if u == nil { // ordinary requests are not marked: tell the two apart
		if status, _ := checkHandshake(r); isUpgradeAttempt(r) && status == 0 {
			httpError(w, http.StatusInternalServerError)
			return nil, fmt.Errorf("chiws: accept: %w", ErrMiddlewareMissing)
		}
		httpError(w, http.StatusBadRequest)
		return nil, fmt.Errorf("chiws: accept: %w", ErrNotWebSocket)
	}
	if u.called.Swap(true) { // even after a failure, which answered
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

// socketOptions resolves the options of one socket, as a copy.
func (m *Middleware) socketOptions(opts *AcceptOptions) socketOptions {
	o := m.cfg.socket
	if opts == nil {
		return o
	}
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
	return o
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

	// The 101 goes out under the deadlines WriteTimeout set on arrival.
	rc := http.NewResponseController(&u.w)
	_ = rc.SetWriteDeadline(time.Time{})
	_ = rc.SetReadDeadline(time.Time{})

	if u.w.h2 != nil { // the stream is the middleware's: HTTP/1.1 wrappers above stay out
		w, r = &u.w, h2UpgradeRequest(r)
	}
	wc, err := websocket.Accept(w, r, &so.ws)
	if err != nil {
		m.cfg.log.Error("websocket accept failed", c.logFields(zap.Error(err))...)
		return nil, fmt.Errorf("chiws: accept: %w", err)
	}
	c.Conn = wc
	if !u.w.hijacked {
		// Hijacked past the middleware's writer, which would not see the
		// connection close; coder/websocket bounds this handshake.
		m.logMisconfigured(r, "websocket closed with 1011: "+ErrHijackBypassed.Error(), w)
		_ = wc.Close(websocket.StatusInternalError, "server misconfigured")
		return nil, fmt.Errorf("chiws: accept: %w", ErrHijackBypassed)
	}
	c.nc = u.w.nc
	c.start = time.Now()
	wc.SetReadLimit(so.readLimit)
	m.stats.accepted.Add(1)
	if !m.register(c) { // Shutdown began during the handshake, without it
		_ = c.shut(ErrShuttingDown, websocket.StatusGoingAway, "server shutting down")
		return nil, fmt.Errorf("chiws: accept: %w", ErrShuttingDown)
	}
	u.accepted.Store(c)
	c.startHeartbeat(so.interval, so.timeout)
	if ce := m.cfg.log.Check(zap.DebugLevel, "websocket accepted"); ce != nil {
		ce.Write(c.logFields(
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

// finish runs when the route handler returns or panics: a socket left open
// is closed with 1011, a panic after Accept too, and the close log is
// written once the socket has ended.
func (u *upgrade) finish(r *http.Request) {
	c := u.accepted.Load()
	if c == nil {
		u.notAccepted(r) // a panic is the caller's Recoverer's business
		return
	}
	m := u.m
	p := recover()
	switch {
	case p == http.ErrAbortHandler: // "abort quietly": re-panicked below
		_ = c.abort(ErrHandlerPanicked, "")
	case p != nil:
		m.stats.panics.Add(1)
		m.cfg.log.Error("websocket handler panicked; closing with 1011",
			c.logFields(zap.Any(keyPanic, p), zap.Stack(keyStack))...)
		_ = c.shut(ErrHandlerPanicked, websocket.StatusInternalError, "internal error")
	case !c.nc.isClosed(): // an early return
		_ = c.shut(ErrHandlerReturned, websocket.StatusInternalError, "handler returned")
	}
	<-c.Done()
	early := c.end.cause.by == ErrHandlerReturned // never written again
	if early {
		m.stats.earlyReturns.Add(1)
	}
	c.logClose(func() {
		if early {
			m.cfg.log.Warn("websocket handler returned with the socket open; closed with 1011 "+
				"(call Conn.Wait to hand the socket to another goroutine)", c.logFields()...)
		}
	})
	if p == http.ErrAbortHandler {
		panic(p)
	}
}

// notAccepted ends an upgrade its route did not accept: a foreign one (a
// reverse proxy, another library) is the route's, and an extended CONNECT
// answered 2xx, or not at all, is refused (RFC 8441: 2xx means open).
func (u *upgrade) notAccepted(r *http.Request) {
	msg := ""
	switch {
	case u.w.foreign:
		msg = "websocket passed through: upgraded by the route, not chiws.Accept"
	case u.w.h2 == nil || !u.returned || u.called.Load():
		return
	case !u.w.answered:
		u.w.refuseH2()
		fallthrough
	case u.w.refused:
		msg = "websocket refused with 501: the route answered an HTTP/2 WebSocket request without accepting it"
	default:
		return
	}
	if ce := u.m.cfg.log.Check(zap.DebugLevel, msg); ce != nil {
		ce.Write(requestFields(r)...)
	}
}
