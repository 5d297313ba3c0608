// Command echoserver is the echo server of docs/getting-started.md: a chi
// router with the chiws middleware and one WebSocket route, /ws, that sends
// every message back.
package main

import (
	"log"
	"net/http"
	"time"

	"github.com/chiws/chiws"
	"github.com/go-chi/chi/v5"
	"go.uber.org/zap"
)

func main() {
	logger, err := zap.NewDevelopment() // Debug and up, human-readable
	if err != nil {
		log.Fatal(err)
	}
	defer logger.Sync()

	ws := chiws.New(chiws.Options{Logger: logger})

	r := chi.NewRouter()
	r.Use(ws.Handler) // before the routes that accept WebSockets
	r.Get("/ws", echo)

	srv := &http.Server{
		Addr:    "localhost:5000",
		Handler: r,
		// Without it, a client that never finishes its headers holds a
		// connection open for as long as it likes.
		ReadHeaderTimeout: 10 * time.Second,
	}
	log.Print("listening on http://localhost:5000")
	log.Fatal(srv.ListenAndServe())
}

// echo sends every message back until the client closes the socket.
func echo(w http.ResponseWriter, r *http.Request) {
	c, err := chiws.Accept(w, r, nil)
	if err != nil {
		return // Accept has already answered the request
	}
	ctx := c.Context() // lives as long as the socket, not the request
	for {
		typ, msg, err := c.Read(ctx)
		if err != nil {
			return // the client closed the socket, or the connection broke
		}
		if err := c.Write(ctx, typ, msg); err != nil {
			return
		}
	}
}
