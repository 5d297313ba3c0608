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
	// DefaultKeepAliveInterval is ASP.NET Core's: a ping every two minutes
	// keeps most proxies and NAT tables from dropping idle sockets.
	DefaultKeepAliveInterval = 2 * time.Minute

	// DefaultKeepAliveTimeout allows for a congested mobile link or a long
	// GC pause, and finds a vanished peer within 4m30s by default (ASP.NET
	// Core's is infinite: dead clients go unnoticed).
	DefaultKeepAliveTimeout = 30 * time.Second

	// DefaultReadLimit (32 KiB) is coder/websocket's default.
	DefaultReadLimit = 32 << 10

	// DefaultCloseTimeout is coder/websocket's bound for each half of a
	// close handshake.
	DefaultCloseTimeout = 5 * time.Second
)

// Options configures the middleware. The zero value is ready to use:
// same-origin browsers only, keep-alive pings every two minutes, a 32 KiB
// read limit, no compression, no connection limit, no logs.
type Options struct {
	// KeepAliveInterval is how often the keep-alive looks at a socket: one
	// quiet since the last look (nothing read, or nothing written) is
	// pinged, one to two intervals after its last traffic. Zero means
	// DefaultKeepAliveInterval (2 minutes); negative disables pings. Pongs
	// are seen only while the handler reads (Read, Reader, CloseRead).
	KeepAliveInterval time.Duration

	// KeepAliveTimeout is how long the peer may stay silent after a ping
	// before the socket is aborted (like ASP.NET Core) and the timeout
	// logged. Anything read after the ping answers it, and a large message
	// the peer is still slowly receiving keeps it alive (the ping is tried
	// again an interval later). Zero means DefaultKeepAliveTimeout (30 s);
	// negative disables the deadline: pings then only keep proxies awake.
	KeepAliveTimeout time.Duration

	// AllowedOrigins lists the Origin values allowed to open a socket, as
	// full origins ("https://client.com", "http://localhost:5000"),
	// case-insensitive. The host may start with one wildcard label
	// ("https://*.example.com": any subdomain, not example.com itself) and
	// the port may be "*" ("http://localhost:*"); "*" allows every origin,
	// and "null" the opaque origin of sandboxed frames and file: pages.
	//
	// Empty means same origin only (the Origin's host and port equal the
	// request's Host), not ASP.NET Core's allow-all: browsers apply no CORS
	// to WebSockets, so allowing all lets any site open sockets with your
	// users' cookies (cross-site WebSocket hijacking). Requests without an
	// Origin header (non-browser clients) are always allowed: Origin
	// protects browser users, it does not authenticate.
	AllowedOrigins []string

	// AllowOriginFunc, when set, replaces AllowedOrigins: it reports whether
	// the raw Origin value is allowed. It runs synchronously on the request
	// path, must not block, and is not called without an Origin header.
	AllowOriginFunc func(r *http.Request, origin string) bool

	// Subprotocols lists the subprotocols the server speaks, in order of
	// preference. Accept picks the first one the client also requested, or
	// none. AcceptOptions.Subprotocols overrides it per socket.
	Subprotocols []string

	// CompressionMode enables permessage-deflate (RFC 7692) when the client
	// offers it; default websocket.CompressionDisabled. Keep it off for
	// sockets that mix secrets with attacker-controlled data: over TLS that
	// invites CRIME/BREACH (ASP.NET Core: DangerousEnableCompression).
	CompressionMode websocket.CompressionMode

	// CompressionThreshold is the smallest message compressed; zero means
	// coder/websocket's default (512 bytes without context takeover, 128 with).
	CompressionThreshold int

	// ReadLimit is the largest message, in bytes, a socket accepts; a larger
	// one closes the socket with 1009 Message Too Big. Zero means
	// DefaultReadLimit (32 KiB). Negative values are invalid.
	ReadLimit int64

	// CloseTimeout bounds every close handshake the server starts
	// (Conn.Close, an early return, a panic, a protocol fault, Shutdown),
	// waiting for a frame being written and for the peer, then aborts: a
	// peer stalled mid-frame holds nothing. coder/websocket bounds each half
	// at 5 s. Zero means DefaultCloseTimeout (5 s); negative is invalid.
	CloseTimeout time.Duration

	// MaxConnections caps the WebSocket requests in flight: accepted
	// sockets plus upgrade requests whose handler is still running. Over
	// it, the middleware answers 503 Service Unavailable with Retry-After
	// before any route handler runs. Zero means unlimited.
	MaxConnections int

	// Logger receives structured logs of every decision; nil means
	// zap.NewNop(), never zap's global logger. Debug: accepted and closed
	// sockets, and what a remote client can cause at will (refused origins,
	// malformed handshakes, the connection limit; also counted in Stats).
	// Info: keep-alive timeouts and Shutdown. Warn: handlers that return
	// early. Error: panics and misconfigurations. Nothing is per message.
	Logger *zap.Logger
}

// Validate reports the first invalid option, naming the field, as New's
// panic does: call it first when options come from configuration.
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
	return config{origins: origins, maxConns: o.MaxConnections,
		closeTimeout: cmp.Or(o.CloseTimeout, DefaultCloseTimeout),
		log:          cmp.Or(o.Logger, zap.NewNop()),
		socket: socketOptions{
			ws: websocket.AcceptOptions{
				Subprotocols:         slices.Clone(o.Subprotocols),
				InsecureSkipVerify:   true, // the middleware applied the origin policy
				CompressionMode:      o.CompressionMode,
				CompressionThreshold: o.CompressionThreshold,
			},
			interval:  orDisabled(o.KeepAliveInterval, DefaultKeepAliveInterval),
			timeout:   orDisabled(o.KeepAliveTimeout, DefaultKeepAliveTimeout),
			readLimit: cmp.Or(o.ReadLimit, DefaultReadLimit),
		},
	}, nil
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

// Middleware is the WebSocket middleware: create it once with New and
// mount its Handler. It is safe for concurrent use.
type Middleware struct {
	cfg config

	mu       sync.Mutex
	inflight int                // admitted upgrade requests whose handler runs
	foreign  int                // of which upgraded by their route, not Accept
	sockets  map[*Conn]struct{} // accepted, connection not yet closed
	closing  bool               // Shutdown was called
	drained  chan struct{}      // closed when inflight-foreign drops to 0 while closing

	// goroutines counts open sockets and running keep-alive callbacks, so
	// that nothing of the middleware runs or logs after Shutdown returns.
	goroutines sync.WaitGroup

	stats struct {
		accepted, rejectedOrigin, rejectedLimit, rejectedHandshake,
		keepAliveTimeouts, pingsSent, earlyReturns, panics atomic.Uint64
	}
}

// New returns a Middleware for opts. Like chi's constructors, it panics on
// an invalid option (see Options.Validate): a misconfigured server must not
// start.
func New(opts Options) *Middleware {
	cfg, err := newConfig(opts)
	if err != nil {
		panic("chiws: Options." + err.Error())
	}
	return &Middleware{cfg: cfg, sockets: make(map[*Conn]struct{})}
}

// Handler is the middleware: ordinary requests reach next untouched and
// without allocating. Upgrades are validated (400, 405 or 426), checked
// against the origin policy (403) and the connection limit (503), marked
// for IsWebSocketRequest and Accept, and handed to next. A socket left open
// by next, or by a panic after Accept, is closed with 1011 and logged.
func (m *Middleware) Handler(next http.Handler) http.Handler {
	return &handler{m: m, next: next}
}

// admit counts a valid, allowed upgrade in flight (the caller must then
// give it back: count) or answers it. Refusals are logged at Debug only and counted
// in Stats, so that a client cannot flood the logs.
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

// count adds to the upgrades in flight (admit's) and to those whose route
// upgraded without Accept, which Shutdown does not wait for (as net/http's
// leaves hijacked connections alone) but MaxConnections counts.
func (m *Middleware) count(inflight, foreign int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.inflight, m.foreign = m.inflight+inflight, m.foreign+foreign
	if m.inflight == m.foreign && m.drained != nil {
		close(m.drained) // the last handler Shutdown waits for returned
		m.drained = nil
	}
}

// httpError writes a status-text body: never internals or request data.
func httpError(w http.ResponseWriter, status int) {
	http.Error(w, http.StatusText(status), status)
}

// IsWebSocketRequest reports whether r is a valid WebSocket upgrade request
// that passed through the middleware (never without it, as in ASP.NET Core).
func IsWebSocketRequest(r *http.Request) bool {
	return upgradeFrom(r.Context()) != nil
}

// RequestedProtocols returns the client's Sec-WebSocket-Protocol list, in
// its order, or nil when r is not a WebSocket request (IsWebSocketRequest).
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

// Stats returns the current counters, cheaply enough for every scrape.
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
