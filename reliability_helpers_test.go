package chiws_test

import (
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/chiws/chiws"
	"github.com/go-chi/chi/v5"
	"go.uber.org/zap/zaptest/observer"
)

// relServer is like server, with an observed logger and a hook to
// configure the http.Server (see startServer).
func relServer(t *testing.T, opts chiws.Options, configure func(*http.Server), setup func(r chi.Router)) (*chiws.Middleware, *httptest.Server, *observer.ObservedLogs) {
	t.Helper()
	logger, logs := observedLogger()
	opts.Logger = logger
	ws := chiws.New(opts)
	return ws, startServer(t, ws, configure, setup), logs
}

// hostOf returns the test server's host:port.
func hostOf(srv *httptest.Server) string {
	return strings.TrimPrefix(srv.URL, "http://")
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
