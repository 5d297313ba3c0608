package chiws

import (
	"cmp"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
	"go.uber.org/zap"
)

// Defaults for the zero values of Options.
const (
	// DefaultKeepAliveInterval is ASP.NET Core's default: a ping every two
	// minutes keeps most proxies and NAT tables from dropping idle sockets.
	DefaultKeepAliveInterval = 2 * time.Minute

	// DefaultKeepAliveTimeout is how long a pong may take. Thirty seconds
	// covers a congested mobile link and a long GC pause on either side,
	// and bounds the detection of a vanished peer to 2m30s with the default
	// interval. ASP.NET Core leaves it infinite, which is why dead clients
	// went unnoticed there for years.
	DefaultKeepAliveTimeout = 30 * time.Second

	// DefaultReadLimit is coder/websocket's default: messages over 32 KiB
	// close the socket with 1009 Message Too Big.
	DefaultReadLimit = 32 << 10

	// DefaultCloseTimeout bounds every close handshake, coder/websocket's
	// own bound for each of its two halves.
	DefaultCloseTimeout = 5 * time.Second
)

// Options configures the middleware. The zero value is ready to use:
// same-origin browsers only, keep-alive pings every two minutes, a 32 KiB
// read limit, no compression, no connection limit, no logs.
type Options struct {
	// KeepAliveInterval is how long a socket may stay quiet (nothing read
	// from the peer, or nothing written to it) before the server sends it
	// a ping frame; busy sockets are not pinged. Zero means
	// DefaultKeepAliveInterval (2 minutes); a negative value disables
	// pings. Pongs are only seen while the handler reads the socket (Read,
	// Reader or CloseRead): see "Keep-alive" in the package documentation.
	KeepAliveInterval time.Duration

	// KeepAliveTimeout is how long after a ping the peer may stay silent
	// before it is declared dead: the socket is then aborted (like ASP.NET
	// Core) and the timeout is logged. Anything read from the peer after
	// the ping answers it: the pong, or a data message. A large message
	// that the peer is still receiving, slowly, also keeps it alive: the
	// ping waits behind it and is tried again an interval later. Zero
	// means DefaultKeepAliveTimeout (30 s); a negative value disables the
	// deadline, leaving pings that only keep proxies awake.
	KeepAliveTimeout time.Duration

	// AllowedOrigins lists the Origin values allowed to open a socket, as
	// full origins ("https://client.com", "http://localhost:5000"),
	// case-insensitive. A host may start with one wildcard label
	// ("https://*.example.com" matches any subdomain, not example.com
	// itself) and the port may be a wildcard ("http://localhost:*"). The
	// entry "*" allows every origin, and "null" allows the opaque origin of
	// sandboxed frames and file: pages.
	//
	// Empty means same origin only: the Origin's host and port must equal
	// the request's Host. This is stricter than ASP.NET Core, whose empty
	// list allows everything, because browsers apply no CORS to WebSockets:
	// an allow-all policy lets any web site open sockets with your users'
	// cookies (cross-site WebSocket hijacking).
	//
	// Requests without an Origin header come from non-browser clients and
	// are always allowed: Origin protects browser users, it does not
	// authenticate anyone.
	AllowedOrigins []string

	// AllowOriginFunc, when set, replaces AllowedOrigins: it receives the
	// raw Origin header value and reports whether it is allowed. It is
	// called synchronously on the request path and must not block. It is
	// not called for requests without an Origin header.
	AllowOriginFunc func(r *http.Request, origin string) bool

	// Subprotocols lists the subprotocols the server speaks, in order of
	// preference. Accept picks the first one the client also requested, or
	// none. AcceptOptions.Subprotocols overrides it per socket.
	Subprotocols []string

	// CompressionMode enables permessage-deflate (RFC 7692) when the client
	// offers it. The default is websocket.CompressionDisabled.
	//
	// Compressing secrets together with attacker-controlled data over TLS
	// exposes the secrets to CRIME/BREACH-style attacks (ASP.NET Core calls
	// its switch DangerousEnableCompression): do not enable it for sockets
	// that mix the two.
	CompressionMode websocket.CompressionMode

	// CompressionThreshold is the smallest message that is compressed.
	// Zero means coder/websocket's default (512 bytes without context
	// takeover, 128 with).
	CompressionThreshold int

	// ReadLimit is the largest message, in bytes, a socket accepts; a larger
	// one closes the socket with 1009 Message Too Big. Zero means
	// DefaultReadLimit (32 KiB). Negative values are invalid.
	ReadLimit int64

	// CloseTimeout bounds every close handshake the server starts
	// (Conn.Close, an early return, a panic, a protocol fault, Shutdown):
	// the close frame waits for the message being written, and the peer's
	// for the peer, and when CloseTimeout passes first the connection is
	// aborted, so that a peer stalled mid-frame holds nothing. Zero means
	// DefaultCloseTimeout (5 s); negative values are invalid.
	CloseTimeout time.Duration

	// MaxConnections caps the WebSocket requests in flight: accepted
	// sockets plus upgrade requests whose handler is still running. Over
	// it, the middleware answers 503 Service Unavailable with Retry-After
	// before any route handler runs. Zero means unlimited.
	MaxConnections int

	// Logger receives structured logs of every decision. Nil means
	// zap.NewNop(): chiws never logs through zap's global logger.
	// What a remote client can cause at will (refused origins, malformed
	// handshakes, the connection limit) and accepted and closed sockets are
	// logged at Debug, and counted in Stats; keep-alive timeouts and
	// Shutdown at Info; handlers that return early at Warn; panics and
	// misconfigurations at Error. Nothing is logged per message.
	Logger *zap.Logger
}

// Validate reports the first invalid option, naming the field. New panics
// with the same message; call Validate first when options come from
// configuration.
func (o *Options) Validate() error {
	_, err := newConfig(*o)
	return err
}

// config is Options validated and normalised.
type config struct {
	origins      originPolicy
	maxConns     int
	closeTimeout time.Duration
	log          *zap.Logger
	socket       socketOptions // of sockets accepted without AcceptOptions
}

func newConfig(o Options) (config, error) {
	origins, err := newOriginPolicy(o.AllowedOrigins, o.AllowOriginFunc)
	switch {
	case err != nil:
		return config{}, err
	case o.ReadLimit < 0:
		return config{}, fmt.Errorf("ReadLimit must not be negative, got %d", o.ReadLimit)
	case o.CloseTimeout < 0:
		return config{}, fmt.Errorf("CloseTimeout must not be negative, got %v", o.CloseTimeout)
	case o.MaxConnections < 0:
		return config{}, fmt.Errorf("MaxConnections must not be negative, got %d", o.MaxConnections)
	case o.CompressionThreshold < 0:
		return config{}, fmt.Errorf("CompressionThreshold must not be negative, got %d", o.CompressionThreshold)
	case o.CompressionMode < websocket.CompressionDisabled || o.CompressionMode > websocket.CompressionNoContextTakeover:
		return config{}, fmt.Errorf("CompressionMode %d is not a websocket.CompressionMode", o.CompressionMode)
	}
	for i, p := range o.Subprotocols {
		if !isToken(p) {
			return config{}, fmt.Errorf("Subprotocols[%d] %q is not an HTTP token", i, p)
		}
	}
	c := config{origins: origins, maxConns: o.MaxConnections, log: o.Logger,
		closeTimeout: cmp.Or(o.CloseTimeout, DefaultCloseTimeout)}
	if c.log == nil {
		c.log = zap.NewNop()
	}
	c.socket = socketOptions{
		ws: websocket.AcceptOptions{
			Subprotocols:         slices.Clone(o.Subprotocols),
			InsecureSkipVerify:   true, // the middleware applied the origin policy
			CompressionMode:      o.CompressionMode,
			CompressionThreshold: o.CompressionThreshold,
		},
		interval:  orDisabled(o.KeepAliveInterval, DefaultKeepAliveInterval),
		timeout:   orDisabled(o.KeepAliveTimeout, DefaultKeepAliveTimeout),
		readLimit: cmp.Or(o.ReadLimit, DefaultReadLimit),
	}
	return c, nil
}

// orDisabled resolves a keep-alive duration: zero inherits, a negative
// value disables (0).
func orDisabled(d, inherited time.Duration) time.Duration {
	return max(cmp.Or(d, inherited), 0)
}

// isToken reports whether s is an HTTP token (RFC 9110 section 5.6.2).
func isToken(s string) bool {
	return s != "" && strings.IndexFunc(s, func(c rune) bool {
		return c <= ' ' || c >= 0x7f || strings.ContainsRune(`()<>@,;:\"/[]?={}`, c)
	}) < 0
}

// Middleware is the WebSocket middleware: mount its Handler before the routes
// that call Accept. A Middleware is safe for concurrent use; create it once
// with New.
type Middleware struct {
	cfg config

	mu       sync.Mutex
	inflight int                // admitted upgrade requests whose handler runs
	foreign  int                // of which upgraded by their route, not Accept
	sockets  map[*Conn]struct{} // accepted, connection not yet closed
	closing  bool               // Shutdown was called
	drained  chan struct{}      // closed when inflight-foreign drops to 0 while closing

	// goroutines counts the sockets until their connection closed, and
	// the keep-alive goroutines while they run: Shutdown waits for it, so
	// that nothing of the middleware runs, or logs, after it returns.
	goroutines sync.WaitGroup

	stats struct {
		accepted, rejectedOrigin, rejectedLimit, rejectedHandshake,
		keepAliveTimeouts, pingsSent, earlyReturns, panics atomic.Uint64
	}
}

// New returns a Middleware configured by opts. It panics with a message that
// names the field when an option is invalid (see Options.Validate), like
// chi's middleware constructors: a misconfigured server should not start.
func New(opts Options) *Middleware {
	cfg, err := newConfig(opts)
	if err != nil {
		panic("chiws: Options." + err.Error())
	}
	return &Middleware{cfg: cfg, sockets: make(map[*Conn]struct{})}
}

// Handler is the middleware: it passes ordinary requests to next untouched
// and without allocating. Upgrade requests are validated (a malformed
// handshake gets 400, 405 or 426), checked against the origin policy (403)
// and the connection limit (503), marked in the request context for
// IsWebSocketRequest and Accept, and handed to next. When next returns, a
// socket it accepted but left open is closed with 1011 and a warning is
// logged; a panic after Accept closes the socket with 1011 and is logged
// instead of crashing the connection's goroutine.
func (m *Middleware) Handler(next http.Handler) http.Handler {
	return &handler{m: m, next: next}
}

// admit validates an upgrade request, applies the origin policy and the
// connection limit, and counts the request in flight, answering the request
// when any of it fails. When it succeeds, the caller must call release.
// Everything a client can trigger at will is logged at Debug only, and
// counted in Stats: a remote client must not be able to flood the logs.
func (m *Middleware) admit(w http.ResponseWriter, r *http.Request) bool {
	if status, reason := checkHandshake(r); status != 0 {
		m.stats.rejectedHandshake.Add(1)
		m.logReject(r, "invalid handshake", reason)
		if status == http.StatusUpgradeRequired {
			w.Header().Set("Sec-WebSocket-Version", "13")
		}
		if status == http.StatusMethodNotAllowed {
			w.Header().Set("Allow", http.MethodGet)
		}
		httpError(w, status)
		return false
	}
	if why := m.cfg.origins.refusal(r); why != "" {
		m.stats.rejectedOrigin.Add(1)
		m.logReject(r, "origin rejected", why)
		httpError(w, http.StatusForbidden)
		return false
	}
	m.mu.Lock()
	closing, full := m.closing, m.cfg.maxConns > 0 && m.inflight >= m.cfg.maxConns
	if !closing && !full {
		m.inflight++
	}
	m.mu.Unlock()
	switch {
	case closing:
		m.logReject(r, "shutting down", ErrShuttingDown.Error())
	case full:
		m.stats.rejectedLimit.Add(1)
		m.logReject(r, "connection limit reached", "MaxConnections="+strconv.Itoa(m.cfg.maxConns))
	default:
		return true
	}
	w.Header().Set("Retry-After", "5") // another instance may take it
	httpError(w, http.StatusServiceUnavailable)
	return false
}

// release ends what a successful admit began; foreign says whether the
// route upgraded the connection itself (passThrough).
func (m *Middleware) release(foreign bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.inflight--
	if foreign {
		m.foreign--
	}
	m.drainedIf()
}

// passThrough notes that an admitted request's route upgraded the
// connection without Accept: the connection is the route's, and Shutdown
// does not wait for it, as net/http's does not wait for hijacked ones. It
// still counts against MaxConnections until its handler returns.
func (m *Middleware) passThrough() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.foreign++
	m.drainedIf()
}

// drainedIf tells Shutdown when the last handler it waits for returned.
func (m *Middleware) drainedIf() {
	if m.inflight == m.foreign && m.drained != nil {
		close(m.drained)
		m.drained = nil
	}
}

// httpError writes a status-text body: never internals or request data.
func httpError(w http.ResponseWriter, status int) {
	http.Error(w, http.StatusText(status), status)
}

// IsWebSocketRequest reports whether r is a valid WebSocket upgrade request
// that passed through the middleware. It is false for every request when the
// middleware is not mounted, as in ASP.NET Core.
func IsWebSocketRequest(r *http.Request) bool {
	return upgradeFrom(r.Context()) != nil
}

// RequestedProtocols returns the subprotocols the client listed in
// Sec-WebSocket-Protocol, in its order, or nil when r is not a WebSocket
// request (see IsWebSocketRequest).
func RequestedProtocols(r *http.Request) []string {
	if upgradeFrom(r.Context()) == nil {
		return nil
	}
	return parseProtocols(r.Header["Sec-Websocket-Protocol"])
}

// Stats is a snapshot of the middleware's counters.
type Stats struct {
	Active            int    // sockets accepted and not yet closed
	Accepted          uint64 // sockets accepted since New
	RejectedOrigin    uint64 // upgrades refused by the origin policy (403)
	RejectedLimit     uint64 // upgrades refused by MaxConnections (503)
	RejectedHandshake uint64 // malformed upgrade requests (400, 405, 426)
	KeepAliveTimeouts uint64 // sockets aborted because a pong was late
	PingsSent         uint64 // keep-alive pings sent, answered in time or not
	EarlyReturns      uint64 // handlers that returned with the socket open
	Panics            uint64 // handlers that panicked after Accept
}

// Stats returns the current counters. It is cheap enough to export as
// metrics on every scrape.
func (m *Middleware) Stats() Stats {
	m.mu.Lock()
	active := len(m.sockets)
	m.mu.Unlock()
	return Stats{
		Active:            active,
		Accepted:          m.stats.accepted.Load(),
		RejectedOrigin:    m.stats.rejectedOrigin.Load(),
		RejectedLimit:     m.stats.rejectedLimit.Load(),
		RejectedHandshake: m.stats.rejectedHandshake.Load(),
		KeepAliveTimeouts: m.stats.keepAliveTimeouts.Load(),
		PingsSent:         m.stats.pingsSent.Load(),
		EarlyReturns:      m.stats.earlyReturns.Load(),
		Panics:            m.stats.panics.Load(),
	}
}
