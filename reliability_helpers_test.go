package chiws_test

import (
	"bytes"
	"context"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/chiws/chiws"
	"github.com/go-chi/chi/v5"
	"go.uber.org/zap/zaptest/observer"
)

// relServer is like server, with an observed logger, a hook to configure the
// http.Server (timeouts, limits) before it starts, and a check that net/http
// logged nothing (a handler panic that escaped the middleware would show
// there).
func relServer(t *testing.T, opts chiws.Options, configure func(*http.Server), setup func(r chi.Router)) (*chiws.Middleware, *httptest.Server, *observer.ObservedLogs) {
	t.Helper()
	logger, logs := observedLogger()
	opts.Logger = logger
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
	return ws, srv, logs
}

// hostOf returns the test server's host:port.
func hostOf(srv *httptest.Server) string {
	return strings.TrimPrefix(srv.URL, "http://")
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
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

// echoErr is the echo loop, returning the read or write error that ended it.
func echoErr(w http.ResponseWriter, r *http.Request) error {
	c, err := chiws.Accept(w, r, nil)
	if err != nil {
		return err
	}
	ctx := c.Context()
	for {
		typ, p, err := c.Read(ctx)
		if err != nil {
			return err
		}
		if err := c.Write(ctx, typ, p); err != nil {
			return err
		}
	}
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

// waitActive waits until the middleware reports n open sockets.
func waitActive(t *testing.T, ws *chiws.Middleware, n int) {
	t.Helper()
	waitFor(t, "Stats().Active to settle", func() bool { return ws.Stats().Active == n })
}
