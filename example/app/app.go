// Package app is the chiws example application: the echo page and echo
// endpoint of ASP.NET Core's WebSockets sample, and a broadcast room that
// shows how a background goroutine owns sockets while their handlers wait.
//
// It is a package, not just a main, so that its tests and the browser tests
// in e2e/ exercise exactly the handler that `go run ./example` serves.
package app

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/chiws/chiws"
	"github.com/chiws/chiws/broadcast"
	"github.com/coder/websocket"
	"github.com/go-chi/chi/v5"
	"github.com/go-chi/chi/v5/middleware"
	"go.uber.org/zap"
)

// Config configures the example application. The zero value serves
// same-origin browsers with chiws's defaults.
type Config struct {
	// AllowedOrigins, KeepAliveInterval, KeepAliveTimeout, ReadLimit and
	// MaxConnections are passed to chiws.Options unchanged.
	AllowedOrigins    []string
	KeepAliveInterval time.Duration
	KeepAliveTimeout  time.Duration
	ReadLimit         int64
	MaxConnections    int

	// CompressionMode and Subprotocols are passed to chiws.Options
	// unchanged: permessage-deflate, and the subprotocols the server
	// speaks, preferred first.
	CompressionMode websocket.CompressionMode
	Subprotocols    []string

	// MemberQueue is how many broadcast messages may wait for one slow
	// member of the broadcast room before the member is closed with 1008
	// "too slow". Zero means broadcast.DefaultQueueMessages.
	MemberQueue int

	// WriteTimeout bounds one write to a broadcast member. A member whose
	// write takes longer is disconnected. Zero means
	// broadcast.DefaultWriteTimeout.
	WriteTimeout time.Duration

	// Broker carries the broadcast room between instances: a NATS or
	// Redis broker makes every instance that shares it one room. Nil
	// means broadcast.NewMemory(), a room in this process only. The App
	// does not close it.
	Broker broadcast.Broker

	// Logger receives the application's and the middleware's logs. Nil
	// means no logs.
	Logger *zap.Logger
}

// App is the example application. Create it with New, serve Handler, and
// call Shutdown when the server stops.
type App struct {
	// Handler serves the echo page (/), the echo socket (/ws) and the
	// broadcast room (/broadcast).
	Handler http.Handler

	// WS is the WebSocket middleware mounted in Handler.
	WS *chiws.Middleware

	// Hub runs the broadcast room, topic Room.
	Hub *broadcast.Hub

	log *zap.Logger
}

// Room is the broadcast room's topic.
const Room = "room"

// Welcome starts the first message a member of the room receives.
const Welcome = "welcome: "

// New validates cfg and builds the application. It starts no goroutine.
func New(cfg Config) (*App, error) {
	log := cfg.Logger
	if log == nil {
		log = zap.NewNop()
	}
	opts := chiws.Options{
		AllowedOrigins:    cfg.AllowedOrigins,
		KeepAliveInterval: cfg.KeepAliveInterval,
		KeepAliveTimeout:  cfg.KeepAliveTimeout,
		ReadLimit:         cfg.ReadLimit,
		MaxConnections:    cfg.MaxConnections,
		CompressionMode:   cfg.CompressionMode,
		Subprotocols:      cfg.Subprotocols,
		Logger:            log.Named("chiws"),
	}
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	if cfg.MemberQueue < 0 {
		return nil, errors.New("MemberQueue must not be negative")
	}
	if cfg.WriteTimeout < 0 {
		return nil, errors.New("WriteTimeout must not be negative")
	}

	a := &App{
		WS:  chiws.New(opts),
		log: log,
	}
	b := cfg.Broker
	if b == nil {
		b = broadcast.NewMemory()
	}
	a.Hub = broadcast.NewHub(b, broadcast.Options{
		QueueMessages: cfg.MemberQueue,
		WriteTimeout:  cfg.WriteTimeout,
		Logger:        log.Named("hub"),
		// Members whose messages are being lost reconnect (1013 Try
		// Again Later), to another instance perhaps, rather than
		// silently miss them; a peer instance gone closes nobody.
		OnBrokerState: func(h *broadcast.Hub, up bool) {
			if !up {
				h.CloseCutOff(websocket.StatusTryAgainLater, "broker unavailable")
			}
		},
	})

	r := chi.NewRouter()
	r.Use(middleware.Recoverer)
	r.Use(a.WS.Handler)
	r.Get("/ws", a.echo)
	r.Get("/broadcast", a.broadcast)
	r.Mount("/", Page())
	a.Handler = r
	return a, nil
}

// echo is the reference sample's Echo endpoint: every message comes back
// with its type (text stays text, binary stays binary) until the client
// closes. coder/websocket answers the client's close frame with the same
// code, which is the sample's CloseAsync(result.CloseStatus).
func (a *App) echo(w http.ResponseWriter, r *http.Request) {
	if !chiws.IsWebSocketRequest(r) {
		http.Error(w, "this endpoint expects a WebSocket request", http.StatusBadRequest)
		return
	}
	c, err := chiws.Accept(w, r, nil)
	if err != nil {
		a.log.Debug("accept failed", zap.Error(err))
		return
	}
	// c.Context is cancelled when the socket closes, including on
	// Shutdown; it never expires with the request.
	ctx := c.Context()
	for {
		typ, p, err := c.Read(ctx)
		if err != nil {
			return // closed: by the client (code echoed), the keep-alive or Shutdown
		}
		if err := c.Write(ctx, typ, p); err != nil {
			return
		}
	}
}

// broadcast joins the socket to the room: the hub writes every message of
// the room to it, from its own goroutine, while this handler reads what
// the client sends and publishes it, with its type, to every other member
// on every instance (the page shows what it sent already). The join
// starts paused, so the welcome goes out before any message of the room.
// Reading until the socket closes also keeps the handler from returning
// while the socket is in use.
func (a *App) broadcast(w http.ResponseWriter, r *http.Request) {
	if !chiws.IsWebSocketRequest(r) {
		http.Error(w, "this endpoint expects a WebSocket request", http.StatusBadRequest)
		return
	}
	c, err := chiws.Accept(w, r, nil)
	if err != nil {
		a.log.Debug("accept failed", zap.Error(err))
		return
	}
	m, err := a.Hub.JoinWith(c, broadcast.JoinOptions{Paused: true}, Room)
	switch {
	case errors.Is(err, broadcast.ErrHubClosed):
		_ = c.Close(websocket.StatusGoingAway, "server shutting down")
		return
	case err != nil:
		// Debug: the hub logs the broker's outage once, not per join.
		a.log.Debug("broadcast join failed", zap.Error(err))
		_ = c.Close(websocket.StatusTryAgainLater, "broker unavailable")
		return
	}
	welcome := fmt.Sprintf("%s%d member(s) on this instance", Welcome, a.Hub.Len(Room))
	_ = m.Send(websocket.MessageText, []byte(welcome)) // fails only if the member left
	m.Resume()
	ctx := c.Context()
	for {
		typ, p, err := c.Read(ctx)
		if err != nil {
			return // closed: the member has left the room
		}
		if err := a.Hub.PublishExcept(ctx, Room, m, typ, p); err != nil {
			if errors.Is(err, broadcast.ErrHubClosed) {
				_ = c.Wait(context.Background()) // the hub is closing it with 1001
				return
			}
			a.log.Debug("broadcast publish failed", zap.Error(err))
			_ = c.Close(websocket.StatusTryAgainLater, "broker unavailable")
			return
		}
	}
}

// Shutdown closes every socket with 1001 Going Away, waits for the
// WebSocket handlers to return, then shuts the broadcast hub down and waits
// for its goroutines. It honours ctx and may be called more than once. Call it
// together with http.Server.Shutdown, which does not see hijacked
// connections.
func (a *App) Shutdown(ctx context.Context) error {
	err := a.WS.Shutdown(ctx)
	return errors.Join(err, a.Hub.Shutdown(ctx))
}
