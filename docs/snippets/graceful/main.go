// Command graceful is the echo server of docs/getting-started.md with a
// graceful shutdown: on SIGINT or SIGTERM it stops accepting requests,
// closes every WebSocket with 1001 Going Away and waits for the handlers.
package main

import (
	"context"
	"errors"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/chiws/chiws"
	"github.com/go-chi/chi/v5"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	ln, err := net.Listen("tcp", "localhost:5000")
	if err != nil {
		log.Fatal(err)
	}
	if err := run(ctx, ln); err != nil {
		log.Fatal(err)
	}
}

// run serves on ln until ctx is cancelled, then shuts down.
func run(ctx context.Context, ln net.Listener) error {
	ws := chiws.New(chiws.Options{})

	r := chi.NewRouter()
	r.Use(ws.Handler)
	r.Get("/ws", echo)

	srv := &http.Server{Handler: r, ReadHeaderTimeout: 10 * time.Second}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }() // run receives from served below

	select {
	case err := <-served:
		return err // the listener failed
	case <-ctx.Done():
	}

	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	// srv.Shutdown stops new requests and waits for the ordinary ones. It
	// neither closes nor waits for hijacked HTTP/1.1 connections, and it
	// waits for HTTP/2 streams, WebSockets included: ws.Shutdown, started
	// with it, closes both kinds with 1001 Going Away and waits for their
	// handlers to return.
	drained := make(chan error, 1)
	srv.RegisterOnShutdown(func() { drained <- ws.Shutdown(ctx) })
	err := errors.Join(srv.Shutdown(ctx), <-drained)
	if serveErr := <-served; !errors.Is(serveErr, http.ErrServerClosed) {
		err = errors.Join(err, serveErr)
	}
	return err
}

// echo sends every message back until the client closes the socket.
func echo(w http.ResponseWriter, r *http.Request) {
	c, err := chiws.Accept(w, r, nil)
	if err != nil {
		return
	}
	ctx := c.Context()
	for {
		typ, msg, err := c.Read(ctx)
		if err != nil {
			return
		}
		if err := c.Write(ctx, typ, msg); err != nil {
			return
		}
	}
}
