package snippets

import (
	"context"
	"errors"
	"expvar"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/chiws/chiws"
	"github.com/coder/websocket"
	"github.com/coder/websocket/wsjson"
	"github.com/go-chi/chi/v5"
	"github.com/go-chi/chi/v5/middleware"
	"go.uber.org/zap"
)

// Chat is the Accept example of docs/lifecycle.md.
func Chat(logger *zap.Logger) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		c, err := chiws.Accept(w, r, nil)
		if err != nil {
			// Accept has answered the request (400, 500, ...): only log.
			if errors.Is(err, chiws.ErrMiddlewareMissing) {
				logger.Error("chiws middleware not mounted", zap.Error(err))
			}
			return
		}
		ctx := c.Context()
		for {
			var msg Message
			if err := c.ReadJSON(ctx, &msg); err != nil {
				return // the client closed the socket, or sent no JSON (1003, 1007)
			}
			msg.Text = strings.ToUpper(msg.Text)
			if err := c.WriteJSON(ctx, msg); err != nil {
				return
			}
		}
	}
}

// Message is a JSON chat message.
type Message struct {
	Text string `json:"text"`
}

// EmbeddedChat is Chat written with wsjson, which takes the embedded
// *websocket.Conn: what it reads and writes bypasses Conn, so a client's
// normal close ends the socket as ErrConnectionLost (1006). It is what
// docs/lifecycle.md shows for functions that take a *websocket.Conn; for
// JSON, Chat's ReadJSON and WriteJSON keep the accounting.
func EmbeddedChat(w http.ResponseWriter, r *http.Request) {
	c, err := chiws.Accept(w, r, nil)
	if err != nil {
		return
	}
	ctx := c.Context()
	for {
		var msg Message
		if err := wsjson.Read(ctx, c.Conn, &msg); err != nil {
			return
		}
		msg.Text = strings.ToUpper(msg.Text)
		if err := wsjson.Write(ctx, c.Conn, msg); err != nil {
			return
		}
	}
}

// Progress is the background-service example of docs/lifecycle.md: the
// handler hands the socket to a worker goroutine and waits until the worker
// closes it, like ASP.NET Core's TaskCompletionSource pattern.
func Progress(jobs chan<- *chiws.Conn) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		c, err := chiws.Accept(w, r, nil)
		if err != nil {
			return
		}
		c.CloseRead(c.Context()) // process pongs and the client's close
		select {
		case jobs <- c: // the worker owns the socket now
		case <-c.Done():
			return // the client left before a worker was free
		}
		_ = c.Wait(context.Background()) // like await tcs.Task
	}
}

// Worker sends three progress updates on each socket it receives, then
// closes it, which ends the handler's Wait (like tcs.TrySetResult).
func Worker(jobs <-chan *chiws.Conn) {
	for c := range jobs {
		ctx := c.Context()
		for step := 1; step <= 3; step++ {
			if err := c.WriteJSON(ctx, map[string]int{"step": step}); err != nil {
				break
			}
		}
		c.Close(websocket.StatusNormalClosure, "done")
	}
}

// Broken returns as soon as it has started a goroutine: the middleware then
// closes the socket with 1011 and logs a warning. Do not copy it.
func Broken(w http.ResponseWriter, r *http.Request) {
	c, err := chiws.Accept(w, r, nil)
	if err != nil {
		return
	}
	go func() {
		_ = c.Write(context.Background(), websocket.MessageText, []byte("hello"))
	}()
	// BUG: missing c.Wait(ctx): the socket is closed when we return.
}

// TimeoutRouter is the chi Timeout example of docs/lifecycle.md.
func TimeoutRouter(ws *chiws.Middleware, timeout time.Duration, echo http.HandlerFunc) http.Handler {
	r := chi.NewRouter()
	r.Use(ws.Handler)                  // first: it wraps the writer Timeout writes to
	r.Use(middleware.Timeout(timeout)) // bounds ordinary requests
	r.Get("/ws", echo)                 // reads with c.Context(): no deadline
	return r
}

// PublishStats is the expvar example of docs/lifecycle.md.
func PublishStats(ws *chiws.Middleware) {
	expvar.Publish("websockets", expvar.Func(func() any { return ws.Stats() }))
}

// ThrottledRouter is the Throttle example of docs/lifecycle.md: chi's
// Throttle bounds the HTTP routes only, and MaxConnections the sockets.
func ThrottledRouter(api, socket http.HandlerFunc) (*chiws.Middleware, http.Handler) {
	ws := chiws.New(chiws.Options{MaxConnections: 1000})
	r := chi.NewRouter()
	r.Use(ws.Handler)
	r.Get("/ws", socket) // a socket holds its slot until it closes
	r.Group(func(r chi.Router) {
		// Throttle holds a token until the handler returns: fine for a
		// request, not for a socket that stays open for hours.
		r.Use(middleware.Throttle(100))
		r.Get("/api/items", api)
	})
	return ws, r
}

// CloseReason is the Conn.Context example of docs/lifecycle.md: it waits
// for the socket to end and says why.
func CloseReason(c *chiws.Conn) string {
	<-c.Done()
	cause := context.Cause(c.Context())
	switch {
	case errors.Is(cause, chiws.ErrClosedByPeer):
		return fmt.Sprintf("the client closed with %d", websocket.CloseStatus(cause))
	case errors.Is(cause, chiws.ErrKeepAliveTimeout):
		return "the client vanished"
	case errors.Is(cause, chiws.ErrShuttingDown):
		return "the server is shutting down"
	}
	return cause.Error()
}
