package http2test

import (
	"bytes"
	"context"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chiws/chiws"
	"github.com/chiws/chiws/http2test/h2dial"
	"github.com/chiws/chiws/internal/wstest"
	"github.com/coder/websocket"
	"github.com/go-chi/chi/v5"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
	"golang.org/x/net/http2"
)

const testTimeout = 10 * time.Second

func testCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	t.Cleanup(cancel)
	return ctx
}

// modes are the two ways HTTP/2 reaches a server: TLS with ALPN, and h2c
// (cleartext, prior knowledge).
var modes = []string{"TLS", "h2c"}

// h2Server is a chi router behind the middleware on an HTTP/2 server.
type h2Server struct {
	*httptest.Server
	ws   *chiws.Middleware
	logs *observer.ObservedLogs
	tr   *http2.Transport
	mode string
}

// syncBuffer collects net/http's error log.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// startServer serves the routes of setup behind the middleware, over
// HTTP/2 in the given mode (HTTP/1.1 is served too), with configure
// applied to the http.Server before it starts. Everything is shut down at
// the end of the test, which fails if net/http logged a panic.
func startServer(t *testing.T, mode string, opts chiws.Options, configure func(*http.Server), setup func(r chi.Router)) *h2Server {
	t.Helper()
	core, logs := observer.New(zap.DebugLevel)
	opts.Logger = zap.New(core)
	ws := chiws.New(opts)
	r := chi.NewRouter()
	r.Use(ws.Handler)
	setup(r)
	srv := httptest.NewUnstartedServer(r)
	errLog := &syncBuffer{}
	srv.Config.ErrorLog = log.New(errLog, "", 0)
	if configure != nil {
		configure(srv.Config)
	}
	s := &h2Server{Server: srv, ws: ws, logs: logs, mode: mode}
	if mode == "TLS" {
		srv.EnableHTTP2 = true
		srv.StartTLS()
		s.tr = h2dial.Transport(srv.Client().Transport.(*http.Transport).TLSClientConfig.Clone())
	} else {
		var p http.Protocols
		p.SetHTTP1(true)
		p.SetUnencryptedHTTP2(true)
		srv.Config.Protocols = &p
		srv.Start()
		s.tr = h2dial.Transport(nil)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
		defer cancel()
		if err := ws.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		s.tr.CloseIdleConnections()
		srv.Close()
		if l := errLog.String(); strings.Contains(l, "panic") {
			t.Errorf("net/http logged a panic:\n%s", l)
		}
	})
	return s
}

// url returns the WebSocket URL of path.
func (s *h2Server) url(path string) string {
	return "ws" + strings.TrimPrefix(s.URL, "http") + path
}

// dialOptions returns DialOptions that dial over HTTP/2, with opts's other
// fields; onResponse, when set, sees the server's own response.
func (s *h2Server) dialOptions(opts *websocket.DialOptions, onResponse ...func(*http.Response)) *websocket.DialOptions {
	if opts == nil {
		opts = &websocket.DialOptions{}
	}
	o := *opts
	rt := &h2dial.RoundTripper{H2: s.tr}
	if len(onResponse) > 0 {
		rt.OnResponse = onResponse[0]
	}
	o.HTTPClient = &http.Client{Transport: rt}
	return &o
}

// dial opens a WebSocket over HTTP/2 and closes it at the end of the test.
func (s *h2Server) dial(t *testing.T, path string, opts *websocket.DialOptions) (*websocket.Conn, *http.Response) {
	t.Helper()
	c, resp, err := websocket.Dial(testCtx(t), s.url(path), s.dialOptions(opts))
	if err != nil {
		status := 0
		if resp != nil {
			status = resp.StatusCode
		}
		t.Fatalf("dial %s over HTTP/2 (%s): %v (status %d)", path, s.mode, err, status)
	}
	t.Cleanup(func() { c.CloseNow() })
	return c, resp
}

// dialStatus dials over HTTP/2 and returns the status of a refused
// extended CONNECT.
func (s *h2Server) dialStatus(t *testing.T, path string, opts *websocket.DialOptions) *http.Response {
	t.Helper()
	c, resp, err := websocket.Dial(testCtx(t), s.url(path), s.dialOptions(opts))
	if err == nil {
		c.CloseNow()
		t.Fatalf("dial %s succeeded, want a refusal", path)
	}
	if resp == nil {
		t.Fatalf("dial %s: %v", path, err)
	}
	return resp
}

// dialHTTP1 opens a WebSocket over HTTP/1.1 on the same server.
func (s *h2Server) dialHTTP1(t *testing.T, path string) *websocket.Conn {
	t.Helper()
	opts := &websocket.DialOptions{}
	if s.mode == "TLS" {
		cfg := s.Client().Transport.(*http.Transport).TLSClientConfig.Clone()
		cfg.NextProtos = []string{"http/1.1"}
		tr := &http.Transport{TLSClientConfig: cfg}
		t.Cleanup(tr.CloseIdleConnections)
		opts.HTTPClient = &http.Client{Transport: tr}
	}
	c, _, err := websocket.Dial(testCtx(t), s.url(path), opts)
	if err != nil {
		t.Fatalf("dial %s over HTTP/1.1: %v", path, err)
	}
	t.Cleanup(func() { c.CloseNow() })
	return c
}

// waitFor polls cond, for state that has no channel (counters, logs).
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	wstest.WaitFor(t, testTimeout, what, cond)
}

// echo is the reference echo endpoint (wstest.Echo).
var echo = wstest.Echo

// forModes runs f once per mode.
func forModes(t *testing.T, f func(t *testing.T, mode string)) {
	for _, mode := range modes {
		t.Run(mode, func(t *testing.T) { f(t, mode) })
	}
}
