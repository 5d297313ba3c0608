package chiws_test

import (
	"context"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/chiws/chiws"
	"github.com/chiws/chiws/internal/wstest"
	"github.com/coder/websocket"
	"github.com/go-chi/chi/v5"
	"go.uber.org/goleak"
)

// TestMaxConnectionsBurst dials 200 sockets at once against a limit of 50:
// exactly 50 upgrade, 150 get 503 with Retry-After, and closed sockets give
// their slots back.
func TestMaxConnectionsBurst(t *testing.T) {
	const (
		limit = 50
		burst = 200
	)
	ignore := goleak.IgnoreCurrent()
	calls := newCalls()
	ws, srv, logs := relServer(t, chiws.Options{MaxConnections: limit, KeepAliveInterval: -1}, nil,
		func(r chi.Router) { r.HandleFunc("/ws", calls.wrap(echoErr)) })
	host := hostOf(srv)

	type result struct {
		c          *wstest.Conn
		status     int
		retryAfter string
		err        error
	}
	results := make(chan result, burst)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := 0; i < burst; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			c, _, err := wstest.Do(host, wstest.UpgradeRequest(host, "/ws", ""), time.Now().Add(testTimeout))
			if err != nil {
				results <- result{err: err}
				return
			}
			results <- result{c: c, status: c.Resp.StatusCode, retryAfter: c.Resp.Header.Get("Retry-After")}
		}()
	}
	close(start)
	wg.Wait()
	close(results)
	var open []*wstest.Conn
	counts := map[int]int{}
	for res := range results {
		if res.err != nil {
			t.Fatal(res.err)
		}
		counts[res.status]++
		switch res.status {
		case http.StatusSwitchingProtocols:
			open = append(open, res.c)
		case http.StatusServiceUnavailable:
			if res.retryAfter == "" {
				t.Error("503 without Retry-After")
			}
		}
	}
	if counts[101] != limit || counts[503] != burst-limit || len(counts) != 2 {
		t.Fatalf("statuses %v, want %d x 101 and %d x 503", counts, limit, burst-limit)
	}
	if st := ws.Stats(); st.Active != limit || st.RejectedLimit != burst-limit {
		t.Errorf("stats: %+v", st)
	}
	if got := logs.FilterMessage("websocket connection limit reached").Len(); got != burst-limit {
		t.Errorf("%d limit logs, want %d", got, burst-limit)
	}
	if got := calls.started.Load(); got != limit {
		t.Errorf("handler called %d times, want %d", got, limit)
	}

	// Closing ten sockets frees exactly ten slots.
	for _, c := range open[:10] {
		c.Close()
	}
	calls.await(t, 10)
	open = open[10:]
	var clients []*websocket.Conn
	for i := 0; i < 10; i++ {
		// The slot is released just after the handler returns: poll.
		waitFor(t, "a freed slot", func() bool {
			c, _, err := websocket.Dial(testCtx(t), wsURL(srv, "/ws"), nil)
			if err != nil {
				return false
			}
			clients = append(clients, c)
			return true
		})
	}
	if got := dialStatus(t, wsURL(srv, "/ws"), nil); got != http.StatusServiceUnavailable {
		t.Errorf("dial over the limit after refilling: %d, want 503", got)
	}

	// Everything closes; nothing leaks.
	for _, c := range open {
		c.Close()
	}
	for _, c := range clients {
		c.Close(websocket.StatusNormalClosure, "")
	}
	calls.await(t, limit)
	waitActive(t, ws, 0)
	waitFor(t, "all slots free", func() bool {
		c, _, err := websocket.Dial(testCtx(t), wsURL(srv, "/ws"), nil)
		if err != nil {
			return false
		}
		c.Close(websocket.StatusNormalClosure, "")
		return true
	})
	calls.await(t, 1)
	// Every slot is free again: a full second round fits.
	var round []*websocket.Conn
	for i := 0; i < limit; i++ {
		round = append(round, dial(t, wsURL(srv, "/ws"), nil))
	}
	for _, c := range round {
		c.Close(websocket.StatusNormalClosure, "")
	}
	calls.await(t, limit)
	srv.CloseClientConnections()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	if err := ws.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	srv.Close()
	goleak.VerifyNone(t, ignore)
}

// TestServerTimeoutsSpareSockets: http.Server's ReadTimeout, WriteTimeout
// and IdleTimeout apply to HTTP requests, not to upgraded sockets. An open
// socket still echoes after several multiples of them, and a handler that
// outlives WriteTimeout before it accepts still gets its 101.
func TestServerTimeoutsSpareSockets(t *testing.T) {
	const d = 200 * time.Millisecond
	calls := newCalls()
	_, srv, _ := relServer(t, chiws.Options{KeepAliveInterval: -1}, func(s *http.Server) {
		s.ReadTimeout, s.WriteTimeout, s.IdleTimeout, s.ReadHeaderTimeout = d, d, d, d
	}, func(r chi.Router) {
		r.HandleFunc("/ws", calls.wrap(echoErr))
		r.HandleFunc("/slow", calls.wrap(func(w http.ResponseWriter, r *http.Request) error {
			// The scenario under test, not synchronisation: an
			// authentication step slower than WriteTimeout.
			time.Sleep(2 * d)
			return echoErr(w, r)
		}))
	})
	ctx := testCtx(t)
	roundTrip := func(c *websocket.Conn, msg string) {
		t.Helper()
		if err := c.Write(ctx, websocket.MessageText, []byte(msg)); err != nil {
			t.Fatalf("write %q: %v", msg, err)
		}
		if _, p, err := c.Read(ctx); err != nil || string(p) != msg {
			t.Fatalf("echo %q: %q %v", msg, p, err)
		}
	}
	fast := dial(t, wsURL(srv, "/ws"), nil)
	slow := dial(t, wsURL(srv, "/slow"), nil)
	roundTrip(fast, "first")
	roundTrip(slow, "first")
	// Let five multiples of every timeout pass on idle sockets.
	for i := 0; i < 5; i++ {
		<-time.After(d)
		roundTrip(fast, "after "+(time.Duration(i+1)*d).String())
	}
	roundTrip(slow, "later")
	fast.Close(websocket.StatusNormalClosure, "")
	slow.Close(websocket.StatusNormalClosure, "")
	calls.await(t, 2)
}
