package chiws_test

import (
	"context"
	"errors"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chiws/chiws"
	"github.com/chiws/chiws/internal/wstest"
	"github.com/coder/websocket"
	"github.com/go-chi/chi/v5"
	"github.com/go-chi/chi/v5/middleware"
	"go.uber.org/goleak"
)

func TestEchoCoder(t *testing.T) {
	_, srv := server(t, chiws.Options{}, func(r chi.Router) { r.Get("/ws", echo) })
	c := dial(t, wsURL(srv, "/ws"), nil)
	ctx := testCtx(t)
	for _, typ := range []websocket.MessageType{websocket.MessageText, websocket.MessageBinary} {
		if err := c.Write(ctx, typ, []byte("hello")); err != nil {
			t.Fatal(err)
		}
		gotTyp, p, err := c.Read(ctx)
		if err != nil || gotTyp != typ || string(p) != "hello" {
			t.Fatalf("echo: %v %q %v", gotTyp, p, err)
		}
	}
	if err := c.Close(websocket.StatusNormalClosure, "bye"); err != nil {
		t.Fatal(err)
	}
}

// zeroWriter is a ResponseWriter that does not allocate.
type zeroWriter struct{ h http.Header }

func (w *zeroWriter) Header() http.Header { return w.h }

func (w *zeroWriter) Write(p []byte) (int, error) { return len(p), nil }

func (w *zeroWriter) WriteHeader(int) {}

func TestPassThroughUntouched(t *testing.T) {
	m := chiws.New(chiws.Options{}) // same-origin only
	w := &zeroWriter{h: http.Header{}}
	r := httptest.NewRequest(http.MethodGet, "http://server.com/api", nil)
	r.Header.Set("Origin", "https://evil.com") // never checked: CORS's job
	var gotW http.ResponseWriter
	var gotR *http.Request
	h := m.Handler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gotW, gotR = w, r
	}))
	h.ServeHTTP(w, r)
	if gotW != http.ResponseWriter(w) || gotR != r {
		t.Fatal("the middleware replaced the writer or the request of a plain request")
	}
	if chiws.IsWebSocketRequest(gotR) {
		t.Fatal("plain request marked as WebSocket")
	}
	if s := m.Stats(); s.RejectedOrigin != 0 {
		t.Fatalf("plain request origin-checked: %+v", s)
	}

	nop := http.HandlerFunc(func(http.ResponseWriter, *http.Request) {})
	wrapped := m.Handler(nop)
	if n := testing.AllocsPerRun(1000, func() { wrapped.ServeHTTP(w, r) }); n != 0 {
		t.Fatalf("pass-through allocates %v times per request, want 0", n)
	}
	// A request with an unrelated Upgrade header (h2c) is also untouched.
	r.Header.Set("Upgrade", "h2c")
	r.Header.Set("Connection", "Upgrade")
	if n := testing.AllocsPerRun(1000, func() { wrapped.ServeHTTP(w, r) }); n != 0 {
		t.Fatalf("h2c pass-through allocates %v times per request, want 0", n)
	}
}

func BenchmarkPassThrough(b *testing.B) {
	w := &zeroWriter{h: http.Header{}}
	r := httptest.NewRequest(http.MethodGet, "http://server.com/api", nil)
	r.Header.Set("Accept", "text/html")
	nop := http.HandlerFunc(func(http.ResponseWriter, *http.Request) {})
	b.Run("bare", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			nop.ServeHTTP(w, r)
		}
	})
	b.Run("chiws", func(b *testing.B) {
		h := chiws.New(chiws.Options{}).Handler(nop)
		b.ReportAllocs()
		for b.Loop() {
			h.ServeHTTP(w, r)
		}
	})
}

func TestOriginRejectedBeforeHandler(t *testing.T) {
	logger, logs := observedLogger()
	calls := 0
	var mu sync.Mutex
	ws, srv := server(t, chiws.Options{Logger: logger, AllowedOrigins: []string{"https://client.com"}}, func(r chi.Router) {
		r.Get("/ws", func(w http.ResponseWriter, r *http.Request) {
			mu.Lock()
			calls++
			mu.Unlock()
			echo(w, r)
		})
	})
	hdr := http.Header{"Origin": {"https://evil.com"}}
	if got := dialStatus(t, wsURL(srv, "/ws"), &websocket.DialOptions{HTTPHeader: hdr}); got != http.StatusForbidden {
		t.Fatalf("foreign origin: status %d, want 403", got)
	}
	hdr.Set("Origin", "https://client.com")
	dial(t, wsURL(srv, "/ws"), &websocket.DialOptions{HTTPHeader: hdr}).CloseNow()
	mu.Lock()
	defer mu.Unlock()
	if calls != 1 {
		t.Fatalf("handler ran %d times, want 1 (only the allowed origin)", calls)
	}
	entries := logs.FilterMessage("websocket origin rejected").All()
	if len(entries) != 1 {
		t.Fatalf("%d origin-rejected log entries, want 1", len(entries))
	}
	f := entries[0].ContextMap()
	for k, want := range map[string]string{"origin": "https://evil.com", "path": "/ws", "reason": "not in AllowedOrigins"} {
		if f[k] != want {
			t.Errorf("log field %s = %v, want %q", k, f[k], want)
		}
	}
	if f["host"] == "" || !strings.HasPrefix(f["remoteAddr"].(string), "127.0.0.1:") {
		t.Errorf("log lacks host or remoteAddr: %v", f)
	}
	// The client has its 101 a moment before Accept returns on the server.
	waitFor(t, "accept counted", func() bool { return ws.Stats().Accepted == 1 })
	if s := ws.Stats(); s.RejectedOrigin != 1 {
		t.Errorf("stats %+v", s)
	}
}

// TestChiMiddlewareStack mounts chiws behind chi's own middleware.
func TestChiMiddlewareStack(t *testing.T) {
	logger, logs := observedLogger()
	var access wstest.SyncBuffer
	ws := chiws.New(chiws.Options{Logger: logger})
	r := chi.NewRouter()
	r.Use(
		middleware.RequestID,
		middleware.RealIP,
		middleware.RequestLogger(&middleware.DefaultLogFormatter{
			Logger: log.New(&access, "", 0), NoColor: true}),
		middleware.Recoverer,
		middleware.Compress(5),
		middleware.Timeout(100*time.Millisecond),
		ws.Handler,
	)
	ctxOK := make(chan error, 1)
	r.Get("/ws/{room}", func(w http.ResponseWriter, r *http.Request) {
		c, err := chiws.Accept(w, r, nil)
		if err != nil {
			return
		}
		ctx := c.Context()
		switch _, has := ctx.Deadline(); {
		case has:
			ctxOK <- errors.New("Conn.Context has the request's deadline")
		case chi.URLParamFromCtx(ctx, "room") != "lobby":
			ctxOK <- errors.New("Conn.Context lost the route values")
		case middleware.GetReqID(ctx) == "":
			ctxOK <- errors.New("Conn.Context lost the request ID")
		default:
			ctxOK <- nil
		}
		_ = wstest.EchoLoop(c)
	})
	srv := httptest.NewServer(r)
	defer srv.Close()
	defer ws.Shutdown(context.Background())

	hdr := http.Header{"Accept-Encoding": {"gzip, deflate"}, "X-Forwarded-For": {"203.0.113.7"}}
	c := dial(t, wsURL(srv, "/ws/lobby"), &websocket.DialOptions{HTTPHeader: hdr})
	if err := <-ctxOK; err != nil {
		t.Fatal(err)
	}
	// Idle past chi's Timeout: the socket must survive it.
	time.Sleep(300 * time.Millisecond)
	ctx := testCtx(t)
	if err := c.Write(ctx, websocket.MessageText, []byte("still here")); err != nil {
		t.Fatal(err)
	}
	if _, p, err := c.Read(ctx); err != nil || string(p) != "still here" {
		t.Fatalf("echo after chi Timeout: %q %v", p, err)
	}
	c.Close(websocket.StatusNormalClosure, "")
	waitFor(t, "closed log", func() bool { return logs.FilterMessage("websocket closed").Len() == 1 })
	accepted := logs.FilterMessage("websocket accepted").All()
	if len(accepted) != 1 {
		t.Fatalf("accepted logs: %d", len(accepted))
	}
	f := accepted[0].ContextMap()
	if f["requestID"] == "" || f["requestID"] == nil || f["route"] != "/ws/{room}" || f["remoteAddr"] != "203.0.113.7" {
		t.Errorf("accepted log fields %v", f)
	}
	// chi's Logger writes when the middleware chain returns, after our
	// closed log.
	waitFor(t, "chi's access log", func() bool {
		return strings.Contains(access.String(), "/ws/lobby")
	})
	if !strings.Contains(access.String(), " - 101 ") {
		t.Errorf("chi's Logger did not record the 101: %q", access.String())
	}
}

func TestMaxConnections(t *testing.T) {
	logger, logs := observedLogger()
	ws, srv := server(t, chiws.Options{MaxConnections: 1, Logger: logger}, func(r chi.Router) { r.Get("/ws", echo) })
	c := dial(t, wsURL(srv, "/ws"), nil)

	_, resp, err := websocket.Dial(testCtx(t), wsURL(srv, "/ws"), nil)
	if err == nil || resp == nil || resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("second socket: %v, want 503", err)
	}
	if resp.Header.Get("Retry-After") == "" {
		t.Error("503 without Retry-After")
	}
	if logs.FilterMessage("websocket connection limit reached").Len() != 1 {
		t.Error("limit not logged")
	}
	// Plain requests are not limited.
	res, err := http.Get(srv.URL + "/ws")
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusBadRequest {
		t.Errorf("plain GET /ws: %d, want 400 from Accept", res.StatusCode)
	}

	c.Close(websocket.StatusNormalClosure, "")
	waitFor(t, "slot released", func() bool {
		c, _, err := websocket.Dial(testCtx(t), wsURL(srv, "/ws"), nil)
		if err == nil {
			c.CloseNow()
		}
		return err == nil
	})
	if s := ws.Stats(); s.RejectedLimit < 1 {
		t.Errorf("stats %+v", s)
	}
}

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
	// A client has its 101 a moment before Accept registers the socket.
	waitActive(t, ws, limit)
	if st := ws.Stats(); st.RejectedLimit != burst-limit {
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

func TestInvalidOptions(t *testing.T) {
	tests := []struct {
		name string
		give chiws.Options
		want string // in the panic message
	}{
		{"trailing slash", chiws.Options{AllowedOrigins: []string{"https://a.com/"}}, "AllowedOrigins[0]"},
		{"no scheme", chiws.Options{AllowedOrigins: []string{"https://ok.com", "a.com"}}, "AllowedOrigins[1]"},
		{"empty", chiws.Options{AllowedOrigins: []string{""}}, "AllowedOrigins[0] is empty"},
		{"mid wildcard", chiws.Options{AllowedOrigins: []string{"https://a*.com"}}, "wildcard"},
		{"inner wildcard", chiws.Options{AllowedOrigins: []string{"https://a.*.com"}}, "wildcard"},
		{"bad port", chiws.Options{AllowedOrigins: []string{"https://a.com:99999"}}, "port"},
		{"path", chiws.Options{AllowedOrigins: []string{"https://a.com/x"}}, "path"},
		{"read limit", chiws.Options{ReadLimit: -1}, "ReadLimit"},
		{"max connections", chiws.Options{MaxConnections: -5}, "MaxConnections"},
		{"compression threshold", chiws.Options{CompressionThreshold: -1}, "CompressionThreshold"},
		{"compression mode", chiws.Options{CompressionMode: 42}, "CompressionMode"},
		{"subprotocol", chiws.Options{Subprotocols: []string{"chat v1"}}, "Subprotocols[0]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.give.Validate()
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Validate() = %v, want an error naming %q", err, tt.want)
			}
			defer func() {
				p := recover()
				msg, _ := p.(string)
				if !strings.HasPrefix(msg, "chiws: Options.") || !strings.Contains(msg, tt.want) {
					t.Fatalf("New panicked with %v, want a message naming %q", p, tt.want)
				}
			}()
			chiws.New(tt.give)
		})
	}
}

func TestOptionsNotRetained(t *testing.T) {
	origins := []string{"https://client.com"}
	m := chiws.New(chiws.Options{AllowedOrigins: origins})
	origins[0] = "https://evil.com"
	if chiws.CheckOrigin(m, originRequest("s", "https://evil.com")) == nil {
		t.Fatal("New kept the caller's slice")
	}
}
