package chiws_test

import (
	"context"
	"errors"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chiws/chiws"
	"github.com/chiws/chiws/internal/wstest"
	"github.com/chiws/chiws/internal/xconnect"
	"github.com/coder/websocket"
	"github.com/go-chi/chi/v5"
	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

func TestMain(m *testing.M) {
	xconnect.Reexec() // net/http's HTTP/2 server offers RFC 8441 only with it
	goleak.VerifyTestMain(m)
}

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

// echo is the reference echo endpoint (wstest.Echo).
var echo = wstest.Echo

// echoErr is the echo loop, returning the read or write error that ended it.
func echoErr(w http.ResponseWriter, r *http.Request) error {
	c, err := chiws.Accept(w, r, nil)
	if err != nil {
		return err
	}
	return wstest.EchoLoop(c)
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

// relServer is like server, with an observed logger and a hook to
// configure the http.Server (see startServer).
func relServer(t *testing.T, opts chiws.Options, configure func(*http.Server), setup func(r chi.Router)) (*chiws.Middleware, *httptest.Server, *observer.ObservedLogs) {
	t.Helper()
	logger, logs := observedLogger()
	opts.Logger = logger
	ws := chiws.New(opts)
	return ws, startServer(t, ws, configure, setup), logs
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
	srv.Config.Protocols = new(http.Protocols)
	srv.Config.Protocols.SetHTTP1(true)
	srv.Config.Protocols.SetUnencryptedHTTP2(true)
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

// hostOf returns the test server's host:port.
func hostOf(srv *httptest.Server) string {
	return strings.TrimPrefix(srv.URL, "http://")
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
	wstest.WaitFor(t, testTimeout, what, cond)
}

// waitActive waits until the middleware reports n open sockets.
func waitActive(t *testing.T, ws *chiws.Middleware, n int) {
	t.Helper()
	waitFor(t, "Stats().Active to settle", func() bool { return ws.Stats().Active == n })
}

func closeStatus(err error) websocket.StatusCode {
	var ce websocket.CloseError
	if errors.As(err, &ce) {
		return ce.Code
	}
	return -1
}

// calls counts handler calls and returns; returned receives one value per
// return (buffered for the largest test).
type calls struct {
	started, ended atomic.Int64
	returned       chan error
}

func newCalls() *calls { return &calls{returned: make(chan error, 4096)} }

// wrap counts calls to h. h reports the error that ended its socket, if any.
func (c *calls) wrap(h func(w http.ResponseWriter, r *http.Request) error) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		c.started.Add(1)
		var err error
		defer func() {
			c.ended.Add(1)
			c.returned <- err
		}()
		err = h(w, r)
	}
}

// accepted counts calls to a route that accepts the socket and hands it
// to h; an Accept error is the call's result.
func (c *calls) accepted(h func(c *chiws.Conn) error) http.HandlerFunc {
	return c.wrap(func(w http.ResponseWriter, r *http.Request) error {
		conn, err := chiws.Accept(w, r, nil)
		if err != nil {
			return err
		}
		return h(conn)
	})
}

// await waits for n handler returns and gives their errors.
func (c *calls) await(t *testing.T, n int) []error {
	t.Helper()
	ctx := testCtx(t)
	errs := make([]error, 0, n)
	for len(errs) < n {
		select {
		case err := <-c.returned:
			errs = append(errs, err)
		case <-ctx.Done():
			t.Fatalf("%d of %d handlers returned", len(errs), n)
		}
	}
	return errs
}

// openFDs counts this process's open file descriptors.
func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("cannot count file descriptors: %v", err)
	}
	return len(ents)
}

func allStacks() string {
	buf := make([]byte, 1<<20)
	return string(buf[:runtime.Stack(buf, true)])
}

// goroutineIn reports whether some goroutine's stack has a frame of fn.
func goroutineIn(fn string) bool {
	buf := make([]byte, 1<<20)
	return strings.Contains(string(buf[:runtime.Stack(buf, true)]), fn+"(")
}

func messages(logs *observer.ObservedLogs) []string {
	var out []string
	for _, e := range logs.All() {
		out = append(out, e.Message)
	}
	return out
}
