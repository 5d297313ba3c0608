package snippets

import (
	"net/http"
	"slices"
	"time"

	"github.com/chiws/chiws"
	"github.com/coder/websocket"
	"github.com/go-chi/chi/v5"
)

// SampleRouter is the Go form of the ASP.NET Core sample's Startup, in
// docs/from-aspnet-core.md.
func SampleRouter() http.Handler {
	// app.UseWebSockets(new WebSocketOptions { KeepAliveInterval = ... })
	ws := chiws.New(chiws.Options{
		KeepAliveInterval: 2 * time.Minute,
		AllowedOrigins:    []string{"https://client.com"},
	})
	r := chi.NewRouter()
	r.Use(ws.Handler)
	r.HandleFunc("/ws", func(w http.ResponseWriter, r *http.Request) {
		if !chiws.IsWebSocketRequest(r) {
			http.Error(w, http.StatusText(http.StatusBadRequest), http.StatusBadRequest)
			return
		}
		c, err := chiws.Accept(w, r, nil) // AcceptWebSocketAsync()
		if err != nil {
			return
		}
		echoLoop(c) // await Echo(webSocket)
	})
	return r
}

// Subprotocol chooses a subprotocol the way an ASP.NET Core action calls
// AcceptWebSocketAsync(subProtocol) after reading
// WebSocketRequestedProtocols.
func Subprotocol(w http.ResponseWriter, r *http.Request) {
	var opts chiws.AcceptOptions
	if slices.Contains(chiws.RequestedProtocols(r), "chat.v2") {
		opts.Subprotocols = []string{"chat.v2"}
	}
	c, err := chiws.Accept(w, r, &opts)
	if err != nil {
		return
	}
	_ = c.Subprotocol() // "chat.v2", or "" when the client did not offer it
	echoLoop(c)
}

// Compressed accepts with per-message deflate, the equivalent of
// DangerousEnableCompression with DisableServerContextTakeover.
func Compressed(w http.ResponseWriter, r *http.Request) {
	c, err := chiws.Accept(w, r, &chiws.AcceptOptions{
		CompressionMode: websocket.CompressionNoContextTakeover,
	})
	if err != nil {
		return
	}
	echoLoop(c)
}
