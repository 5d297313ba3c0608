package snippets

import (
	"net/http"
	"time"
)

// NewServer is the server of docs/http2.md's recommendations: HTTP/2
// receive windows that keep one socket that is not read from stalling the
// others of its connection, and an idle timeout for keep-alive
// connections. example/main.go configures its server the same way.
func NewServer(r http.Handler) *http.Server {
	srv := &http.Server{
		Handler:           r,
		ReadHeaderTimeout: 10 * time.Second,
		// Closes keep-alive connections that carry no request (HTTP/1.1)
		// or no stream (HTTP/2); a WebSocket is never idle in this sense.
		IdleTimeout: 2 * time.Minute,
		HTTP2: &http.HTTP2Config{
			// A socket's unread messages hold at most this much of the
			// connection's window: keep it a small fraction of the next one.
			MaxReceiveBufferPerStream: 64 << 10,
			// The largest connection window net/http allows (under 4 MiB).
			MaxReceiveBufferPerConnection: 4<<20 - 1,
		},
	}
	return srv
}
