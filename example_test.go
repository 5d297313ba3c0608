package chiws_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"time"

	"github.com/chiws/chiws"
	"github.com/coder/websocket"
	"github.com/go-chi/chi/v5"
	"go.uber.org/zap"
)

// Mount the middleware on a chi router, before the routes, and accept
// sockets in a route handler.
func Example() {
	ws := chiws.New(chiws.Options{
		AllowedOrigins:    []string{"https://app.example.com"},
		KeepAliveInterval: 30 * time.Second,
		Logger:            zap.NewNop(), // your *zap.Logger
	})
	r := chi.NewRouter()
	r.Use(ws.Handler)
	r.Get("/ws", func(w http.ResponseWriter, r *http.Request) {
		if !chiws.IsWebSocketRequest(r) {
			http.Error(w, "WebSocket only", http.StatusBadRequest)
			return
		}
		c, err := chiws.Accept(w, r, nil)
		if err != nil {
			return // Accept has answered the request
		}
		defer c.CloseNow()
		for {
			typ, msg, err := c.Read(c.Context())
			if err != nil {
				return
			}
			if err := c.Write(c.Context(), typ, msg); err != nil {
				return
			}
		}
	})

	srv := httptest.NewServer(r)
	defer srv.Close()
	defer ws.Shutdown(context.Background())

	// A client: coder/websocket's Dial (any RFC 6455 client works).
	ctx := context.Background()
	c, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(srv.URL, "http")+"/ws", nil)
	if err != nil {
		log.Fatal(err)
	}
	defer c.CloseNow()
	c.Write(ctx, websocket.MessageText, []byte("hello"))
	_, msg, _ := c.Read(ctx)
	fmt.Println(string(msg))
	c.Close(websocket.StatusNormalClosure, "")
	// Output: hello
}

// The reference article's echo loop: every message comes back unchanged
// until the client closes, and the close handshake then answers with the
// client's close code.
func ExampleAccept() {
	echo := func(w http.ResponseWriter, r *http.Request) {
		c, err := chiws.Accept(w, r, &chiws.AcceptOptions{
			Subprotocols: []string{"echo.v1"},
		})
		if err != nil {
			return
		}
		ctx := c.Context() // no request deadline; done when the socket closes
		for {
			typ, msg, err := c.Read(ctx)
			if err != nil {
				return // the client closed, or the socket failed
			}
			if err := c.Write(ctx, typ, msg); err != nil {
				return
			}
		}
	}

	ws := chiws.New(chiws.Options{})
	r := chi.NewRouter()
	r.Use(ws.Handler)
	r.Get("/echo", echo)
	srv := httptest.NewServer(r)
	defer srv.Close()
	defer ws.Shutdown(context.Background())

	ctx := context.Background()
	c, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(srv.URL, "http")+"/echo",
		&websocket.DialOptions{Subprotocols: []string{"echo.v1"}})
	if err != nil {
		log.Fatal(err)
	}
	defer c.CloseNow()
	fmt.Println("subprotocol:", c.Subprotocol())
	c.Write(ctx, websocket.MessageBinary, []byte{1, 2, 3})
	typ, msg, _ := c.Read(ctx)
	fmt.Println(typ, msg)
	c.Close(websocket.StatusNormalClosure, "")
	// Output:
	// subprotocol: echo.v1
	// MessageBinary [1 2 3]
}

// hub is a background service that owns sockets once their handler has
// handed them over.
type hub struct {
	join chan *chiws.Conn
	stop chan struct{}
	wg   sync.WaitGroup
}

func (h *hub) run() {
	defer h.wg.Done()
	for {
		select {
		case c := <-h.join:
			h.wg.Add(1)
			go func() { // owned by the hub; ends when the socket closes
				defer h.wg.Done()
				_, msg, err := c.Read(c.Context())
				if err == nil {
					c.Write(c.Context(), websocket.MessageText, append([]byte("hub got: "), msg...))
				}
				c.Close(websocket.StatusNormalClosure, "bye")
			}()
		case <-h.stop:
			return
		}
	}
}

// A handler hands its socket to a background service and waits for the
// service to finish with it: ASP.NET Core's TaskCompletionSource pattern.
// Returning without waiting would close the socket with 1011.
func ExampleConn_Wait() {
	h := &hub{join: make(chan *chiws.Conn), stop: make(chan struct{})}
	h.wg.Add(1)
	go h.run()
	defer func() { close(h.stop); h.wg.Wait() }()

	ws := chiws.New(chiws.Options{})
	r := chi.NewRouter()
	r.Use(ws.Handler)
	r.Get("/hub", func(w http.ResponseWriter, r *http.Request) {
		c, err := chiws.Accept(w, r, nil)
		if err != nil {
			return
		}
		h.join <- c
		// Not r.Context(): it may carry a request deadline.
		if err := c.Wait(context.Background()); err != nil {
			log.Print(err)
		}
	})
	srv := httptest.NewServer(r)
	defer srv.Close()
	defer ws.Shutdown(context.Background())

	ctx := context.Background()
	c, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(srv.URL, "http")+"/hub", nil)
	if err != nil {
		log.Fatal(err)
	}
	defer c.CloseNow()
	c.Write(ctx, websocket.MessageText, []byte("hi"))
	_, msg, _ := c.Read(ctx)
	fmt.Println(string(msg))
	_, _, err = c.Read(ctx)
	fmt.Println(websocket.CloseStatus(err))
	// Output:
	// hub got: hi
	// StatusNormalClosure
}

// Start Shutdown with http.Server.Shutdown: the server stops taking
// requests, and the middleware closes every socket with 1001 Going Away and
// waits for the handlers to return. Registered this way, it drains HTTP/1.1
// and HTTP/2 sockets alike (the server waits for HTTP/2 streams).
func ExampleMiddleware_Shutdown() {
	ws := chiws.New(chiws.Options{})
	r := chi.NewRouter()
	r.Use(ws.Handler)
	r.Get("/ws", func(w http.ResponseWriter, r *http.Request) {
		c, err := chiws.Accept(w, r, nil)
		if err != nil {
			return
		}
		for {
			if _, _, err := c.Read(c.Context()); err != nil {
				return
			}
		}
	})
	srv := httptest.NewServer(r)

	ctx := context.Background()
	c, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(srv.URL, "http")+"/ws", nil)
	if err != nil {
		log.Fatal(err)
	}
	defer c.CloseNow()
	closed := make(chan error, 1)
	go func() { // the client reads, so it answers the close handshake
		_, _, err := c.Read(ctx)
		closed <- err
	}()

	// In a real program: on SIGINT/SIGTERM, with http.Server srv.Config.
	shutdownCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	drained := make(chan error, 1)
	srv.Config.RegisterOnShutdown(func() { drained <- ws.Shutdown(shutdownCtx) })
	err = errors.Join(srv.Config.Shutdown(shutdownCtx), <-drained)
	fmt.Println("shutdown error:", err)
	fmt.Println("client saw:", websocket.CloseStatus(<-closed))
	srv.Close()
	// Output:
	// shutdown error: <nil>
	// client saw: StatusGoingAway
}
