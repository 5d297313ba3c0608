package e2e

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/chiws/chiws"
	"github.com/chiws/chiws/internal/wstest"
	"github.com/go-chi/chi/v5"
	gorilla "github.com/gorilla/websocket"
)

// TestEchoGorilla talks to the middleware with an independent client
// implementation: echo of both message types, and a close code that
// reaches the server and comes back.
func TestEchoGorilla(t *testing.T) {
	ws := chiws.New(chiws.Options{})
	r := chi.NewRouter()
	r.Use(ws.Handler)
	r.Get("/ws", wstest.Echo)
	srv := httptest.NewServer(r)
	defer srv.Close()
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := ws.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
	}()

	c, resp, err := gorilla.DefaultDialer.Dial("ws"+strings.TrimPrefix(srv.URL, "http")+"/ws", nil)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer c.Close()
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("status %d", resp.StatusCode)
	}
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	for _, typ := range []int{gorilla.TextMessage, gorilla.BinaryMessage} {
		if err := c.WriteMessage(typ, []byte("ping")); err != nil {
			t.Fatal(err)
		}
		gotTyp, p, err := c.ReadMessage()
		if err != nil || gotTyp != typ || string(p) != "ping" {
			t.Fatalf("echo: %v %q %v", gotTyp, p, err)
		}
	}
	msg := gorilla.FormatCloseMessage(4000, "app close")
	if err := c.WriteMessage(gorilla.CloseMessage, msg); err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.ReadMessage(); !gorilla.IsCloseError(err, 4000) {
		t.Fatalf("read after close = %v, want the echoed 4000", err)
	}
}

// TestGorillaUpgraderBehindMiddleware: a route that upgrades with
// gorilla/websocket's Upgrader, not chiws.Accept, works behind the
// middleware as it would without it (a foreign upgrade passes through).
func TestGorillaUpgraderBehindMiddleware(t *testing.T) {
	ws := chiws.New(chiws.Options{})
	r := chi.NewRouter()
	r.Use(ws.Handler)
	up := gorilla.Upgrader{}
	r.Get("/ws", func(w http.ResponseWriter, r *http.Request) {
		c, err := up.Upgrade(w, r, nil)
		if err != nil {
			t.Errorf("Upgrade behind the middleware: %v", err)
			return
		}
		defer c.Close()
		for {
			typ, p, err := c.ReadMessage()
			if err != nil || c.WriteMessage(typ, p) != nil {
				return
			}
		}
	})
	srv := httptest.NewServer(r)
	defer srv.Close()
	c, _, err := gorilla.DefaultDialer.Dial("ws"+strings.TrimPrefix(srv.URL, "http")+"/ws", nil)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if err := c.WriteMessage(gorilla.TextMessage, []byte("gorilla")); err != nil {
		t.Fatal(err)
	}
	if _, p, err := c.ReadMessage(); err != nil || string(p) != "gorilla" {
		t.Fatalf("echo: %q %v", p, err)
	}
	if err := c.WriteMessage(gorilla.CloseMessage, gorilla.FormatCloseMessage(1000, "")); err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.ReadMessage(); !gorilla.IsCloseError(err, 1000) {
		t.Fatalf("read after close = %v, want the echoed 1000", err)
	}
}
