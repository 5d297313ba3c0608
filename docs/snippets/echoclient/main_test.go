package main

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/chiws/chiws"
	"github.com/go-chi/chi/v5"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestRun runs the guide's client against an echo server and checks what
// it prints.
func TestRun(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ws := chiws.New(chiws.Options{})
	r := chi.NewRouter()
	r.Use(ws.Handler)
	r.Get("/ws", func(w http.ResponseWriter, r *http.Request) {
		c, err := chiws.Accept(w, r, nil)
		if err != nil {
			return
		}
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
	defer ws.Shutdown(ctx)

	var out bytes.Buffer
	if err := run(ctx, &out, "ws"+strings.TrimPrefix(srv.URL, "http")+"/ws", "hello"); err != nil {
		t.Fatal(err)
	}
	if got := out.String(); got != "hello\n" {
		t.Errorf("printed %q, want %q", got, "hello\n")
	}
}
