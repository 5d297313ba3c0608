package chiws_test

import (
	"context"
	"errors"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/chiws/chiws"
	"github.com/chiws/chiws/internal/wstest"
	"github.com/coder/websocket"
	"github.com/go-chi/chi/v5"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

// testTimeout bounds every wait in a test: a hung test fails instead of
// hanging the suite.
const testTimeout = 10 * time.Second

func testCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	t.Cleanup(cancel)
	return ctx
}

// observedLogger returns a logger that records every entry at Debug and up.
func observedLogger() (*zap.Logger, *observer.ObservedLogs) {
	core, logs := observer.New(zap.DebugLevel)
	return zap.New(core), logs
}

// echo is the reference article's echo loop: messages come back unchanged
// until the client closes.
func echo(w http.ResponseWriter, r *http.Request) {
	c, err := chiws.Accept(w, r, nil)
	if err != nil {
		return
	}
	ctx := c.Context()
	for {
		typ, p, err := c.Read(ctx)
		if err != nil {
			return
		}
		if err := c.Write(ctx, typ, p); err != nil {
			return
		}
	}
}

// reader returns a handler that accepts through wrap(w) (wrap may be
// nil) and reads until the socket ends, dropping what it reads: pongs and
// close frames are processed.
func reader(wrap func(http.ResponseWriter) http.ResponseWriter) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if wrap != nil {
			w = wrap(w)
		}
		c, err := chiws.Accept(w, r, nil)
		if err != nil {
			return
		}
		defer c.CloseNow()
		for {
			if _, _, err := c.Read(c.Context()); err != nil {
				return
			}
		}
	}
}

// server starts a chi router with the middleware mounted and routes added
// by setup, and shuts both down at the end of the test.
func server(t *testing.T, opts chiws.Options, setup func(r chi.Router)) (*chiws.Middleware, *httptest.Server) {
	t.Helper()
	ws := chiws.New(opts)
	return ws, startServer(t, ws, nil, setup)
}

// startServer serves a chi router with ws mounted and the routes added by
// setup on a loopback httptest server; configure, when set, adjusts the
// http.Server (timeouts, limits) before it starts. At the end of the test it
// shuts ws and the server down, and fails the test if net/http logged a
// panic (one that escaped the middleware would show there).
func startServer(t *testing.T, ws *chiws.Middleware, configure func(*http.Server), setup func(r chi.Router)) *httptest.Server {
	t.Helper()
	r := chi.NewRouter()
	r.Use(ws.Handler)
	setup(r)
	srv := httptest.NewUnstartedServer(r)
	errLog := &wstest.SyncBuffer{}
	srv.Config.ErrorLog = log.New(errLog, "", 0)
	if configure != nil {
		configure(srv.Config)
	}
	srv.Start()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
		defer cancel()
		if err := ws.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		srv.Close()
		if s := errLog.String(); strings.Contains(s, "panic") {
			t.Errorf("net/http logged a panic:\n%s", s)
		}
	})
	return srv
}

func wsURL(srv *httptest.Server, path string) string {
	return "ws" + strings.TrimPrefix(srv.URL, "http") + path
}

// dial opens a coder/websocket client and closes it at the end of the test.
func dial(t *testing.T, url string, opts *websocket.DialOptions) *websocket.Conn {
	t.Helper()
	c, resp, err := websocket.Dial(testCtx(t), url, opts)
	if err != nil {
		status := 0
		if resp != nil {
			status = resp.StatusCode
		}
		t.Fatalf("dial %s: %v (status %d)", url, err, status)
	}
	t.Cleanup(func() { c.CloseNow() })
	return c
}

// dialStatus dials and returns the HTTP status of a refused handshake.
func dialStatus(t *testing.T, url string, opts *websocket.DialOptions) int {
	t.Helper()
	c, resp, err := websocket.Dial(testCtx(t), url, opts)
	if err == nil {
		c.CloseNow()
		return http.StatusSwitchingProtocols
	}
	if resp == nil {
		t.Fatalf("dial %s: %v", url, err)
	}
	return resp.StatusCode
}

// waitFor polls cond until it holds or the test times out. It is for
// observing state that has no channel (counters, log entries); it never
// replaces a channel the code under test exposes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(testTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func closeStatus(err error) websocket.StatusCode {
	var ce websocket.CloseError
	if errors.As(err, &ce) {
		return ce.Code
	}
	return -1
}
