package chiws_test

import (
	"context"
	"errors"
	"log"
	"net"
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
	gorilla "github.com/gorilla/websocket"
	"go.uber.org/zap/zaptest/observer"
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

// TestEchoGorilla talks to the server with an independent implementation.
func TestEchoGorilla(t *testing.T) {
	_, srv := server(t, chiws.Options{}, func(r chi.Router) { r.Get("/ws", echo) })
	c, resp, err := gorilla.DefaultDialer.Dial(wsURL(srv, "/ws"), nil)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer c.Close()
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("status %d", resp.StatusCode)
	}
	_ = c.SetReadDeadline(time.Now().Add(testTimeout))
	for _, typ := range []int{gorilla.TextMessage, gorilla.BinaryMessage} {
		if err := c.WriteMessage(typ, []byte("ping")); err != nil {
			t.Fatal(err)
		}
		gotTyp, p, err := c.ReadMessage()
		if err != nil || gotTyp != typ || string(p) != "ping" {
			t.Fatalf("echo: %v %q %v", gotTyp, p, err)
		}
	}
	// The server answers the client's close with the same code.
	msg := gorilla.FormatCloseMessage(4000, "app close")
	if err := c.WriteMessage(gorilla.CloseMessage, msg); err != nil {
		t.Fatal(err)
	}
	_, _, err = c.ReadMessage()
	if !gorilla.IsCloseError(err, 4000) {
		t.Fatalf("got %v, want the server to echo close code 4000", err)
	}
}

// zeroWriter is a ResponseWriter that does not allocate.
type zeroWriter struct{ h http.Header }

func (w *zeroWriter) Header() http.Header         { return w.h }
func (w *zeroWriter) Write(p []byte) (int, error) { return len(p), nil }
func (w *zeroWriter) WriteHeader(int)             {}

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

func TestKeepAlivePings(t *testing.T) {
	_, srv := server(t, chiws.Options{KeepAliveInterval: time.Second}, func(r chi.Router) { r.Get("/ws", echo) })
	c, _, err := gorilla.DefaultDialer.Dial(wsURL(srv, "/ws"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	pings := make(chan time.Time, 10)
	c.SetPingHandler(func(data string) error {
		pings <- time.Now()
		return c.WriteControl(gorilla.PongMessage, []byte(data), time.Now().Add(time.Second))
	})
	readErr := make(chan error, 1)
	go func() { // reads so that the ping handler runs; ends when c closes
		_, _, err := c.ReadMessage()
		readErr <- err
	}()
	start := time.Now()
	var got []time.Time
	timeout := time.After(testTimeout)
	for len(got) < 3 {
		select {
		case p := <-pings:
			got = append(got, p)
		case err := <-readErr:
			t.Fatalf("socket closed before 3 pings: %v", err)
		case <-timeout:
			t.Fatalf("saw %d pings in %v", len(got), testTimeout)
		}
	}
	prev := start
	for i, p := range got {
		gap := p.Sub(prev)
		t.Logf("ping %d after %v", i+1, gap)
		// Never early; late only by scheduling noise.
		if gap < 900*time.Millisecond || gap > 3*time.Second {
			t.Errorf("ping %d came %v after the previous one, want about 1s", i+1, gap)
		}
		prev = p
	}
	c.Close()
	<-readErr
}

func TestKeepAliveTimeoutClosesDeadPeer(t *testing.T) {
	logger, logs := observedLogger()
	returned := make(chan time.Duration, 1)
	ws, srv := server(t, chiws.Options{
		Logger:            logger,
		KeepAliveInterval: 200 * time.Millisecond,
		KeepAliveTimeout:  300 * time.Millisecond,
	}, func(r chi.Router) {
		r.Get("/ws", func(w http.ResponseWriter, r *http.Request) {
			start := time.Now()
			echo(w, r)
			returned <- time.Since(start)
		})
	})
	// A gorilla client that never reads never answers pings: to the server
	// it is a peer that vanished.
	c, _, err := gorilla.DefaultDialer.Dial(wsURL(srv, "/ws"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	select {
	case d := <-returned:
		t.Logf("dead peer detected and handler returned after %v (interval 200ms + timeout 300ms)", d)
		if d > 3*time.Second {
			t.Errorf("detection took %v", d)
		}
	case <-time.After(testTimeout):
		t.Fatal("handler still running: dead peer not detected")
	}
	if s := ws.Stats(); s.KeepAliveTimeouts != 1 || s.PingsSent == 0 {
		t.Errorf("stats %+v", s)
	}
	if n := logs.FilterMessage("websocket keep-alive timeout; aborting").Len(); n != 1 {
		t.Errorf("%d keep-alive timeout log entries, want 1", n)
	}
	// The closed log is written when the middleware sees the handler return.
	waitFor(t, "closed log", func() bool { return logs.FilterMessage("websocket closed").Len() == 1 })
	closed := logs.FilterMessage("websocket closed").All()
	if closed[0].ContextMap()["closedBy"] != "keepalive" {
		t.Errorf("closed log: %v", closed)
	}
}

func TestKeepAliveDisabled(t *testing.T) {
	ws, srv := server(t, chiws.Options{KeepAliveInterval: -1}, func(r chi.Router) { r.Get("/ws", echo) })
	c := dial(t, wsURL(srv, "/ws"), nil)
	ctx := testCtx(t)
	if err := c.Write(ctx, websocket.MessageText, []byte("x")); err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.Read(ctx); err != nil {
		t.Fatal(err)
	}
	if s := ws.Stats(); s.PingsSent != 0 {
		t.Fatalf("pings sent with keep-alive disabled: %+v", s)
	}
}

func TestEarlyReturnClosesWith1011(t *testing.T) {
	logger, logs := observedLogger()
	ws, srv := server(t, chiws.Options{Logger: logger}, func(r chi.Router) {
		r.Get("/rooms/{id}", func(w http.ResponseWriter, r *http.Request) {
			c, err := chiws.Accept(w, r, nil)
			if err != nil {
				return
			}
			go func() { <-c.Done() }() // a "background service" the handler forgot to Wait for
		})
	})
	c := dial(t, wsURL(srv, "/rooms/42"), nil)
	_, _, err := c.Read(testCtx(t))
	if got := closeStatus(err); got != websocket.StatusInternalError {
		t.Fatalf("client got %v, want close 1011", err)
	}
	waitFor(t, "early return logged", func() bool {
		return logs.FilterMessageSnippet("returned with the socket open").Len() == 1
	})
	if ws.Stats().EarlyReturns != 1 {
		t.Errorf("stats %+v", ws.Stats())
	}
	warn := logs.FilterMessageSnippet("returned with the socket open").All()
	if warn[0].ContextMap()["route"] != "/rooms/{id}" {
		t.Fatalf("warning log: %v", warn)
	}
	waitFor(t, "socket released", func() bool { return ws.Stats().Active == 0 })
}

func TestPanicAfterAccept(t *testing.T) {
	logger, logs := observedLogger()
	var errLog wstest.SyncBuffer
	ws := chiws.New(chiws.Options{Logger: logger})
	r := chi.NewRouter()
	outerPanics := make(chan any, 1)
	r.Use(func(next http.Handler) http.Handler { // an outer Recoverer
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			defer func() {
				if p := recover(); p != nil {
					outerPanics <- p
					w.WriteHeader(http.StatusInternalServerError)
				}
			}()
			next.ServeHTTP(w, r)
		})
	}, ws.Handler)
	r.Get("/panic", func(w http.ResponseWriter, r *http.Request) {
		if _, err := chiws.Accept(w, r, nil); err != nil {
			return
		}
		panic("boom")
	})
	r.Get("/panic-before", func(w http.ResponseWriter, r *http.Request) { panic("before accept") })
	r.Get("/ws", echo)
	srv := httptest.NewUnstartedServer(r)
	srv.Config.ErrorLog = log.New(&errLog, "", 0)
	srv.Start()
	defer srv.Close()
	defer ws.Shutdown(context.Background())

	c := dial(t, wsURL(srv, "/panic"), nil)
	_, _, err := c.Read(testCtx(t))
	if got := closeStatus(err); got != websocket.StatusInternalError {
		t.Fatalf("client got %v, want close 1011", err)
	}
	waitFor(t, "panic logged", func() bool { return logs.FilterMessageSnippet("panicked").Len() == 1 })
	e := logs.FilterMessageSnippet("panicked").All()[0]
	if e.ContextMap()["panic"] != "boom" || !strings.Contains(e.ContextMap()["stack"].(string), "TestPanicAfterAccept") {
		t.Errorf("panic log fields: %v", e.ContextMap())
	}
	select {
	case p := <-outerPanics:
		t.Fatalf("a panic after Accept reached the outer middleware: %v", p)
	default:
	}
	// A panic before Accept is not ours: it reaches the outer Recoverer.
	if got := dialStatus(t, wsURL(srv, "/panic-before"), nil); got != http.StatusInternalServerError {
		t.Errorf("panic before accept: status %d, want the outer recoverer's 500", got)
	}
	if p := <-outerPanics; p != "before accept" {
		t.Errorf("outer recoverer got %v", p)
	}
	// The server keeps serving.
	c2 := dial(t, wsURL(srv, "/ws"), nil)
	if err := c2.Write(testCtx(t), websocket.MessageText, []byte("alive")); err != nil {
		t.Fatal(err)
	}
	if _, p, err := c2.Read(testCtx(t)); err != nil || string(p) != "alive" {
		t.Fatalf("after panic: %q %v", p, err)
	}
	c2.Close(websocket.StatusNormalClosure, "")
	if s := ws.Stats(); s.Panics != 1 {
		t.Errorf("stats %+v", s)
	}
	if strings.Contains(errLog.String(), "panic serving") || strings.Contains(errLog.String(), "hijacked") {
		t.Errorf("net/http logged: %s", errLog.String())
	}
}

// TestWriteTimeoutBeforeAccept: a handler that authenticates slowly, past
// http.Server.WriteTimeout, must still get the 101 to the client, whether
// net/http writes the 101 (under a wrapping middleware) or chiws does.
func TestWriteTimeoutBeforeAccept(t *testing.T) {
	const writeTimeout = 100 * time.Millisecond
	tests := []struct {
		name    string
		wrapper func(http.Handler) http.Handler
	}{
		{"server writer", func(h http.Handler) http.Handler { return h }},
		{"behind a wrapping middleware", func(h http.Handler) http.Handler {
			return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				h.ServeHTTP(middleware.NewWrapResponseWriter(w, r.ProtoMajor), r)
			})
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ws := chiws.New(chiws.Options{})
			r := chi.NewRouter()
			r.Use(tt.wrapper, ws.Handler)
			r.Get("/ws", func(w http.ResponseWriter, r *http.Request) {
				// The slow authentication under test: the write deadline passes.
				time.Sleep(3 * writeTimeout)
				echo(w, r)
			})
			srv := httptest.NewUnstartedServer(r)
			srv.Config.WriteTimeout = writeTimeout
			srv.Config.ReadTimeout = writeTimeout
			srv.Start()
			defer srv.Close()
			defer ws.Shutdown(context.Background())

			c := dial(t, wsURL(srv, "/ws"), nil)
			ctx := testCtx(t)
			if err := c.Write(ctx, websocket.MessageText, []byte("late")); err != nil {
				t.Fatal(err)
			}
			if _, p, err := c.Read(ctx); err != nil || string(p) != "late" {
				t.Fatalf("echo after slow accept: %q %v", p, err)
			}
			c.Close(websocket.StatusNormalClosure, "")
		})
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
		for {
			typ, p, err := c.Read(ctx)
			if err != nil {
				return
			}
			if err := c.Write(ctx, typ, p); err != nil {
				return
			}
		}
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

// TestBackgroundService is ASP.NET Core's TaskCompletionSource pattern: the
// handler hands the socket to a long-lived service and waits.
func TestBackgroundService(t *testing.T) {
	logger, logs := observedLogger()
	sockets := make(chan *chiws.Conn)
	stop := make(chan struct{})
	var svc sync.WaitGroup
	svc.Add(1)
	go func() { // the service: owned by the test, stopped by stop
		defer svc.Done()
		for {
			select {
			case c := <-sockets:
				ctx := c.Context()
				_, p, err := c.Read(ctx)
				if err == nil {
					_ = c.Write(ctx, websocket.MessageText, append([]byte("svc:"), p...))
				}
				c.Close(websocket.StatusNormalClosure, "done")
			case <-stop:
				return
			}
		}
	}()
	defer func() { close(stop); svc.Wait() }()

	waitErr := make(chan error, 1)
	ws, srv := server(t, chiws.Options{Logger: logger}, func(r chi.Router) {
		r.Get("/svc", func(w http.ResponseWriter, r *http.Request) {
			c, err := chiws.Accept(w, r, nil)
			if err != nil {
				return
			}
			sockets <- c
			waitErr <- c.Wait(context.Background())
		})
	})
	c := dial(t, wsURL(srv, "/svc"), nil)
	ctx := testCtx(t)
	if err := c.Write(ctx, websocket.MessageText, []byte("hi")); err != nil {
		t.Fatal(err)
	}
	if _, p, err := c.Read(ctx); err != nil || string(p) != "svc:hi" {
		t.Fatalf("got %q %v", p, err)
	}
	if _, _, err := c.Read(ctx); closeStatus(err) != websocket.StatusNormalClosure {
		t.Fatalf("got %v, want close 1000", err)
	}
	if err := <-waitErr; err != nil {
		t.Fatalf("Wait = %v", err)
	}
	waitFor(t, "closed log", func() bool { return logs.FilterMessage("websocket closed").Len() == 1 })
	f := logs.FilterMessage("websocket closed").All()[0].ContextMap()
	if f["closedBy"] != "server" || f["closeCode"] != int64(1000) || f["closeReason"] != "done" ||
		f["messagesIn"] != uint64(1) || f["messagesOut"] != uint64(1) {
		t.Errorf("closed log fields %v", f)
	}
	if f["bytesIn"].(int64) == 0 || f["bytesOut"].(int64) == 0 {
		t.Errorf("byte counts missing: %v", f)
	}
	if s := ws.Stats(); s.EarlyReturns != 0 || s.Active != 0 {
		t.Errorf("stats %+v", s)
	}
}

func TestWaitContext(t *testing.T) {
	got := make(chan error, 1)
	_, srv := server(t, chiws.Options{}, func(r chi.Router) {
		r.Get("/ws", func(w http.ResponseWriter, r *http.Request) {
			c, err := chiws.Accept(w, r, nil)
			if err != nil {
				return
			}
			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			got <- c.Wait(ctx) // the socket is open: Wait gives up
			c.CloseNow()
		})
	})
	dial(t, wsURL(srv, "/ws"), nil)
	if err := <-got; !errors.Is(err, context.Canceled) {
		t.Fatalf("Wait = %v, want context.Canceled", err)
	}
}

func TestShutdown(t *testing.T) {
	logger, logs := observedLogger()
	handlers := make(chan string, 2)
	ws, srv := server(t, chiws.Options{Logger: logger}, func(r chi.Router) {
		r.Get("/echo", func(w http.ResponseWriter, r *http.Request) {
			echo(w, r)
			handlers <- "echo"
		})
		r.Get("/wait", func(w http.ResponseWriter, r *http.Request) {
			c, err := chiws.Accept(w, r, nil)
			if err != nil {
				return
			}
			c.CloseRead(c.Context()) // a write-only socket
			_ = c.Wait(context.Background())
			handlers <- "wait"
		})
	})
	a := dial(t, wsURL(srv, "/echo"), nil)
	b := dial(t, wsURL(srv, "/wait"), nil)
	waitFor(t, "two sockets", func() bool { return ws.Stats().Active == 2 })

	errs := make(chan error, 2)
	for _, c := range []*websocket.Conn{a, b} {
		go func() { // ends when the server closes c
			_, _, err := c.Read(context.Background())
			errs <- err
		}()
	}
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	if err := ws.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	// Shutdown returned: every handler has returned already.
	if len(handlers) != 2 {
		t.Fatalf("%d handlers returned before Shutdown did, want 2", len(handlers))
	}
	for range 2 {
		if err := <-errs; closeStatus(err) != websocket.StatusGoingAway {
			t.Fatalf("client got %v, want 1001", err)
		}
	}
	_, resp, err := websocket.Dial(testCtx(t), wsURL(srv, "/echo"), nil)
	if err == nil || resp == nil || resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("upgrade after Shutdown: %v %v, want 503 with Retry-After", resp, err)
	}
	if ws.Stats().Active != 0 || logs.FilterMessage("websocket shutdown: closing sockets").Len() != 1 {
		t.Fatalf("stats %+v", ws.Stats())
	}
}

// TestShutdownDeadline: a peer that never completes the close handshake
// cannot hold Shutdown past its context.
func TestShutdownDeadline(t *testing.T) {
	ws, srv := server(t, chiws.Options{}, func(r chi.Router) { r.Get("/ws", echo) })
	// A raw TCP peer: handshake, then silence.
	conn, err := net.Dial("tcp", srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	req := "GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n" +
		"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: " + validKey + "\r\n\r\n"
	if _, err := conn.Write([]byte(req)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "socket accepted", func() bool { return ws.Stats().Active == 1 })
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	if err := ws.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Shutdown = %v, want DeadlineExceeded", err)
	}
	// coder/websocket would wait 10 s for the close handshake; Shutdown
	// must cut it at its deadline (the bound is loose for slow machines).
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("Shutdown took %v with a 200ms deadline", d)
	}
	waitFor(t, "socket aborted", func() bool { return ws.Stats().Active == 0 })
}

func TestAcceptErrors(t *testing.T) {
	errs := make(chan error, 1)
	accept := func(w http.ResponseWriter, r *http.Request) {
		c, err := chiws.Accept(w, r, nil)
		if err == nil {
			_, err = chiws.Accept(w, r, nil)
			defer c.CloseNow()
		}
		errs <- err
	}
	// Without the middleware.
	bare := httptest.NewServer(http.HandlerFunc(accept))
	defer bare.Close()
	if got := dialStatus(t, wsURL(bare, "/"), nil); got != http.StatusInternalServerError {
		t.Fatalf("without middleware: %d, want 500", got)
	}
	if err := <-errs; !errors.Is(err, chiws.ErrMiddlewareMissing) || !strings.Contains(err.Error(), "r.Use") {
		t.Fatalf("err = %v, want ErrMiddlewareMissing telling how to mount it", err)
	}
	res, err := http.Get(bare.URL)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if err := <-errs; !errors.Is(err, chiws.ErrNotWebSocket) || res.StatusCode != http.StatusBadRequest {
		t.Fatalf("plain GET: %d %v, want 400 ErrNotWebSocket", res.StatusCode, err)
	}

	// With the middleware.
	_, srv := server(t, chiws.Options{}, func(r chi.Router) { r.Get("/", accept) })
	res, err = http.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if err := <-errs; !errors.Is(err, chiws.ErrNotWebSocket) || res.StatusCode != http.StatusBadRequest {
		t.Fatalf("plain GET: %d %v, want 400 ErrNotWebSocket", res.StatusCode, err)
	}
	c := dial(t, wsURL(srv, "/"), nil)
	if err := <-errs; !errors.Is(err, chiws.ErrAlreadyAccepted) {
		t.Fatalf("second Accept: %v, want ErrAlreadyAccepted", err)
	}
	c.CloseNow()
}

func TestSubprotocols(t *testing.T) {
	_, srv := server(t, chiws.Options{Subprotocols: []string{"chat.v2", "chat.v1"}}, func(r chi.Router) {
		r.Get("/ws", echo)
		r.Get("/v1only", func(w http.ResponseWriter, r *http.Request) {
			c, err := chiws.Accept(w, r, &chiws.AcceptOptions{Subprotocols: []string{"chat.v1"}})
			if err != nil {
				return
			}
			c.Close(websocket.StatusNormalClosure, "")
		})
	})
	tests := []struct {
		path string
		give []string
		want string
	}{
		{"/ws", []string{"chat.v1", "chat.v2"}, "chat.v2"}, // server preference wins
		{"/ws", []string{"chat.v1"}, "chat.v1"},
		{"/ws", []string{"other"}, ""},
		{"/v1only", []string{"chat.v2", "chat.v1"}, "chat.v1"},
	}
	for _, tt := range tests {
		c := dial(t, wsURL(srv, tt.path), &websocket.DialOptions{Subprotocols: tt.give})
		if got := c.Subprotocol(); got != tt.want {
			t.Errorf("%s offering %q: got %q, want %q", tt.path, tt.give, got, tt.want)
		}
		c.CloseNow()
	}
}

func TestReadLimit(t *testing.T) {
	_, srv := server(t, chiws.Options{ReadLimit: 1024}, func(r chi.Router) {
		r.Get("/ws", echo)
		r.Get("/big", func(w http.ResponseWriter, r *http.Request) {
			c, err := chiws.Accept(w, r, &chiws.AcceptOptions{ReadLimit: 4096})
			if err != nil {
				return
			}
			_, p, err := c.Read(c.Context())
			if err == nil {
				c.Write(c.Context(), websocket.MessageBinary, p)
			}
			c.Close(websocket.StatusNormalClosure, "")
		})
	})
	ctx := testCtx(t)
	c := dial(t, wsURL(srv, "/ws"), nil)
	if err := c.Write(ctx, websocket.MessageBinary, make([]byte, 2048)); err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.Read(ctx); closeStatus(err) != websocket.StatusMessageTooBig {
		t.Fatalf("got %v, want close 1009", err)
	}
	big := dial(t, wsURL(srv, "/big"), nil)
	if err := big.Write(ctx, websocket.MessageBinary, make([]byte, 2048)); err != nil {
		t.Fatal(err)
	}
	if _, p, err := big.Read(ctx); err != nil || len(p) != 2048 {
		t.Fatalf("per-socket ReadLimit: %d bytes, %v", len(p), err)
	}
}

func TestCompression(t *testing.T) {
	_, srv := server(t, chiws.Options{}, func(r chi.Router) {
		r.Get("/plain", echo)
		r.Get("/deflate", func(w http.ResponseWriter, r *http.Request) {
			c, err := chiws.Accept(w, r, &chiws.AcceptOptions{CompressionMode: websocket.CompressionContextTakeover})
			if err != nil {
				return
			}
			c.CloseRead(c.Context())
			_ = c.Wait(context.Background())
		})
	})
	opts := func() *websocket.DialOptions {
		return &websocket.DialOptions{CompressionMode: websocket.CompressionContextTakeover}
	}
	for path, want := range map[string]bool{"/plain": false, "/deflate": true} {
		c, resp, err := websocket.Dial(testCtx(t), wsURL(srv, path), opts())
		if err != nil {
			t.Fatal(err)
		}
		if got := resp.Header.Get("Sec-WebSocket-Extensions") != ""; got != want {
			t.Errorf("%s: compression negotiated %v, want %v", path, got, want)
		}
		c.Close(websocket.StatusNormalClosure, "")
	}
}

func TestConnContextCancelledOnClose(t *testing.T) {
	done := make(chan error, 1)
	_, srv := server(t, chiws.Options{}, func(r chi.Router) {
		r.Get("/ws", func(w http.ResponseWriter, r *http.Request) {
			c, err := chiws.Accept(w, r, nil)
			if err != nil {
				return
			}
			ctx := c.Context()
			if ctx.Err() != nil {
				done <- errors.New("context cancelled while open")
				return
			}
			_, _, _ = c.Read(ctx) // until the client closes
			select {
			case <-ctx.Done():
				done <- ctx.Err()
			case <-time.After(testTimeout):
				done <- errors.New("context not cancelled after close")
			}
		})
	})
	c := dial(t, wsURL(srv, "/ws"), nil)
	c.Close(websocket.StatusNormalClosure, "")
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v", err)
	}
}

// TestLogLevels: at Info, a normal socket's life logs nothing; accepted and
// closed are Debug; nothing is logged per message.
func TestLogLevels(t *testing.T) {
	logger, logs := observedLogger()
	_, srv := server(t, chiws.Options{Logger: logger}, func(r chi.Router) { r.Get("/ws", echo) })
	c := dial(t, wsURL(srv, "/ws"), nil)
	ctx := testCtx(t)
	for range 10 {
		c.Write(ctx, websocket.MessageText, []byte("m"))
		if _, _, err := c.Read(ctx); err != nil {
			t.Fatal(err)
		}
	}
	c.Close(websocket.StatusNormalClosure, "")
	waitFor(t, "closed log", func() bool { return logs.FilterMessage("websocket closed").Len() == 1 })
	for _, e := range logs.All() {
		if e.Level > -1 { // above Debug
			t.Errorf("normal socket logged at %v: %s", e.Level, e.Message)
		}
	}
	if n := logs.Len(); n != 2 {
		t.Errorf("%d log entries for one socket, want 2 (accepted, closed): %v", n, messages(logs))
	}
}

func messages(logs *observer.ObservedLogs) []string {
	var out []string
	for _, e := range logs.All() {
		out = append(out, e.Message)
	}
	return out
}
