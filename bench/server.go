// Package bench compares chiws with raw coder/websocket and gorilla/websocket:
// in-process benchmarks of the request path (go test -bench) and a
// multi-process harness (cmd/bench) that measures connect rate, echo
// throughput and latency, idle footprint, keep-alive cost and churn on
// loopback, and chiws's WebSockets over cleartext HTTP/2 (RFC 8441) beside
// HTTP/1.1. See docs/benchmarks.md.
package bench

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/chiws/chiws"
	"github.com/coder/websocket"
	"github.com/go-chi/chi/v5"
	gorilla "github.com/gorilla/websocket"
)

// Candidate names, as accepted by NewServer and the benchserver binary.
const (
	// Coder is a bare websocket.Accept in an http.HandlerFunc.
	Coder = "coder"
	// CoderPing is Coder plus the usual ping goroutine per connection (a
	// ticker and a Ping loop).
	CoderPing = "coder-ping"
	// ChiCoder is websocket.Accept behind a chi router, without chiws.
	ChiCoder = "chi-coder"
	// Chiws is chi + the chiws middleware + chiws.Accept.
	Chiws = "chiws"
	// Gorilla is gorilla/websocket's Upgrader.Upgrade.
	Gorilla = "gorilla"
	// GorillaPing is Gorilla plus the customary gorilla keep-alive, as in
	// gorilla's chat example: a goroutine per connection with a ticker
	// and WriteControl(PingMessage), and a pong handler that extends the
	// read deadline.
	GorillaPing = "gorilla-ping"
)

// Candidates lists every candidate NewServer knows.
var Candidates = []string{Coder, CoderPing, ChiCoder, Chiws, Gorilla, GorillaPing}

// Routes served by every candidate:
//
//	/echo  answers each message with the same message.
//	/idle  reads until the socket closes (so pongs and close frames are
//	       processed) and never writes.
const (
	PathEcho = "/echo"
	PathIdle = "/idle"
)

// ServerConfig configures NewServer.
type ServerConfig struct {
	// Candidate is one of Candidates.
	Candidate string
	// KeepAlive is chiws's KeepAliveInterval and CoderPing's and
	// GorillaPing's ticker period. Zero means 2 minutes (chiws's
	// default); negative disables.
	KeepAlive time.Duration
}

// Server is a candidate's WebSocket handler with the counters the
// harness reads.
type Server struct {
	http.Handler
	cfg    ServerConfig
	mw     *chiws.Middleware // Chiws only
	active atomic.Int64
	pings  atomic.Uint64 // CoderPing and GorillaPing only; chiws counts its own
}

// NewServer builds the handler for cfg.Candidate.
func NewServer(cfg ServerConfig) (*Server, error) {
	s := &Server{cfg: cfg}
	if cfg.KeepAlive == 0 {
		cfg.KeepAlive = chiws.DefaultKeepAliveInterval
	}
	s.cfg = cfg
	switch cfg.Candidate {
	case Coder, CoderPing:
		mux := http.NewServeMux()
		mux.HandleFunc(PathEcho, s.coderHandler(false))
		mux.HandleFunc(PathIdle, s.coderHandler(true))
		s.Handler = mux
	case ChiCoder:
		r := chi.NewRouter()
		r.Get(PathEcho, s.coderHandler(false))
		r.Get(PathIdle, s.coderHandler(true))
		s.Handler = r
	case Chiws:
		s.mw = chiws.New(chiws.Options{
			KeepAliveInterval: cfg.KeepAlive,
			AllowedOrigins:    []string{"*"},
		})
		r := chi.NewRouter()
		r.Use(s.mw.Handler)
		r.Get(PathEcho, s.chiwsHandler(false))
		r.Get(PathIdle, s.chiwsHandler(true))
		s.Handler = r
	case Gorilla, GorillaPing:
		up := &gorilla.Upgrader{CheckOrigin: func(*http.Request) bool { return true }}
		mux := http.NewServeMux()
		mux.HandleFunc(PathEcho, s.gorillaHandler(up, false))
		mux.HandleFunc(PathIdle, s.gorillaHandler(up, true))
		s.Handler = mux
	default:
		return nil, fmt.Errorf("bench: unknown candidate %q", cfg.Candidate)
	}
	return s, nil
}

// Active is the number of open sockets.
func (s *Server) Active() int64 { return s.active.Load() }

// PingsSent counts keep-alive pings: chiws's Stats().PingsSent, or the
// pings of CoderPing's and GorillaPing's goroutines.
func (s *Server) PingsSent() uint64 {
	if s.mw != nil {
		return s.mw.Stats().PingsSent
	}
	return s.pings.Load()
}

// Shutdown closes chiws's sockets; it is a no-op for the other candidates.
func (s *Server) Shutdown(ctx context.Context) error {
	if s.mw != nil {
		return s.mw.Shutdown(ctx)
	}
	return nil
}

func (s *Server) coderHandler(idle bool) http.HandlerFunc {
	ping := s.cfg.Candidate == CoderPing && s.cfg.KeepAlive > 0
	return func(w http.ResponseWriter, r *http.Request) {
		c, err := websocket.Accept(w, r, &websocket.AcceptOptions{InsecureSkipVerify: true})
		if err != nil {
			return
		}
		s.active.Add(1)
		defer s.active.Add(-1)
		defer c.CloseNow()
		ctx := context.Background()
		if ping {
			var cancel context.CancelFunc
			ctx, cancel = context.WithCancel(ctx)
			done := make(chan struct{})
			// Owned by this handler: cancel stops it, and the handler
			// waits for done before returning.
			go func() {
				defer close(done)
				s.pingLoop(ctx, c)
			}()
			defer func() { cancel(); <-done }()
		}
		serve(ctx, c, idle)
	}
}

// msgConn is what serve needs: *websocket.Conn and *chiws.Conn both have
// it, with the same signatures.
type msgConn interface {
	Read(ctx context.Context) (websocket.MessageType, []byte, error)
	Write(ctx context.Context, typ websocket.MessageType, p []byte) error
}

// serve is the /echo and /idle loop of coder and chiws: read every message
// (so that pongs and close frames are processed) and, unless idle, write it
// back, until the socket ends.
func serve(ctx context.Context, c msgConn, idle bool) {
	for {
		typ, p, err := c.Read(ctx)
		if err != nil {
			return
		}
		if !idle {
			if err := c.Write(ctx, typ, p); err != nil {
				return
			}
		}
	}
}

// pingLoop is the customary keep-alive of a raw coder/websocket server.
func (s *Server) pingLoop(ctx context.Context, c *websocket.Conn) {
	t := time.NewTicker(s.cfg.KeepAlive)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		pctx, cancel := context.WithTimeout(ctx, chiws.DefaultKeepAliveTimeout)
		err := c.Ping(pctx)
		cancel()
		s.pings.Add(1)
		if err != nil {
			if !errors.Is(err, context.Canceled) {
				_ = c.CloseNow()
			}
			return
		}
	}
}

func (s *Server) chiwsHandler(idle bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		c, err := chiws.Accept(w, r, nil)
		if err != nil {
			return
		}
		s.active.Add(1)
		defer s.active.Add(-1)
		defer c.CloseNow()
		ctx := context.Background()
		serve(ctx, c, idle)
	}
}

func (s *Server) gorillaHandler(up *gorilla.Upgrader, idle bool) http.HandlerFunc {
	ping := s.cfg.Candidate == GorillaPing && s.cfg.KeepAlive > 0
	pongWait := s.cfg.KeepAlive + chiws.DefaultKeepAliveTimeout
	return func(w http.ResponseWriter, r *http.Request) {
		c, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		s.active.Add(1)
		defer s.active.Add(-1)
		defer c.Close()
		if ping {
			_ = c.SetReadDeadline(time.Now().Add(pongWait))
			c.SetPongHandler(func(string) error {
				return c.SetReadDeadline(time.Now().Add(pongWait))
			})
			stop := make(chan struct{})
			done := make(chan struct{})
			// Owned by this handler: closing stop ends it, and the
			// handler waits for done before returning.
			go func() {
				defer close(done)
				s.gorillaPingLoop(c, stop)
			}()
			defer func() { close(stop); <-done }()
		}
		for {
			typ, p, err := c.ReadMessage()
			if err != nil {
				return
			}
			if !idle {
				if err := c.WriteMessage(typ, p); err != nil {
					return
				}
			}
		}
	}
}

// gorillaWriteWait is the write deadline of GorillaPing's pings, as in
// gorilla's chat example.
const gorillaWriteWait = 10 * time.Second

// gorillaPingLoop is the customary keep-alive of a gorilla/websocket
// server (gorilla's chat example): a ticker and WriteControl(PingMessage).
// The pongs are handled by the reading goroutine's pong handler.
func (s *Server) gorillaPingLoop(c *gorilla.Conn, stop <-chan struct{}) {
	t := time.NewTicker(s.cfg.KeepAlive)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		err := c.WriteControl(gorilla.PingMessage, nil, time.Now().Add(gorillaWriteWait))
		s.pings.Add(1)
		if err != nil {
			_ = c.Close()
			return
		}
	}
}

// Pad wraps h so that it runs levels nested calls deeper, each with a
// 64-byte buffer in its frame: a stand-in for the user's own middleware
// stack. benchserver -pad uses it to find how much stack a candidate
// leaves before the socket goroutine's stack doubles (see
// docs/benchmarks.md).
func Pad(h http.Handler, levels int) http.Handler {
	if levels <= 0 {
		return h
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		padStack(levels, func() { h.ServeHTTP(w, r) })
	})
}

//go:noinline
func padStack(n int, f func()) {
	var buf [64]byte
	if n <= 1 {
		f()
	} else {
		padStack(n-1, f)
	}
	padSink = buf[n%64]
}

var padSink byte
