package chiws_test

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/chiws/chiws"
	"github.com/go-chi/chi/v5"
)

// Test101HasNoBodyHeaders: like net/http, the 101 carries no
// Content-Length or Transfer-Encoding even when a handler set them.
func Test101HasNoBodyHeaders(t *testing.T) {
	_, srv := server(t, chiws.Options{}, func(r chi.Router) {
		r.With(func(next http.Handler) http.Handler {
			return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Length", "0")
				w.Header().Set("Transfer-Encoding", "chunked")
				w.Header().Set("X-Kept", "yes")
				next.ServeHTTP(w, r)
			})
		}).Get("/ws", echo)
	})
	conn, err := net.Dial("tcp", srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	io.WriteString(conn, "GET /ws HTTP/1.1\r\nHost: "+srv.Listener.Addr().String()+"\r\nUpgrade: websocket\r\n"+
		"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: "+validKey+"\r\n\r\n")
	conn.SetReadDeadline(time.Now().Add(testTimeout))
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols || resp.Header.Get("X-Kept") != "yes" {
		t.Fatalf("status %d, headers %v", resp.StatusCode, resp.Header)
	}
	// No Date either: net/http formats it while it hijacks, the deepest
	// point of the upgrade (see upgradeWriter.WriteHeader).
	for _, h := range []string{"Content-Length", "Transfer-Encoding", "Date"} {
		if _, ok := resp.Header[h]; ok {
			t.Errorf("101 carries %s", h)
		}
	}
}
