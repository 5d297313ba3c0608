package snippets

import (
	"context"
	"errors"
	"expvar"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chiws/chiws"
	"github.com/chiws/chiws/broadcast"
	"github.com/chiws/chiws/internal/wstest"
	"github.com/coder/websocket"
	"github.com/coder/websocket/wsjson"
	"github.com/go-chi/chi/v5"
	"github.com/go-chi/chi/v5/middleware"
	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const testTimeout = 10 * time.Second

func testCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	t.Cleanup(cancel)
	return ctx
}

// serve serves h (whose middleware is ws) and shuts both down at the end of
// the test.
func serve(t *testing.T, ws *chiws.Middleware, h http.Handler) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
		defer cancel()
		if err := ws.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		srv.Close()
	})
	return srv
}

// route mounts ws and h at /ws on a chi router.
func route(ws *chiws.Middleware, h http.HandlerFunc) http.Handler {
	r := chi.NewRouter()
	r.Use(ws.Handler)
	r.Get("/ws", h)
	return r
}

func wsURL(srv *httptest.Server) string {
	return "ws" + strings.TrimPrefix(srv.URL, "http") + "/ws"
}

func dial(t *testing.T, url string, opts *websocket.DialOptions) (*websocket.Conn, *http.Response) {
	t.Helper()
	c, resp, err := websocket.Dial(testCtx(t), url, opts)
	if err != nil {
		t.Fatalf("dial %s: %v", url, err)
	}
	t.Cleanup(func() { c.CloseNow() })
	return c, resp
}

func observed() (*zap.Logger, *observer.ObservedLogs) {
	core, logs := observer.New(zap.DebugLevel)
	return zap.New(core), logs
}

// waitFor polls cond, for state that has no channel (counters, logs).
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	wstest.WaitFor(t, testTimeout, what, cond)
}

func waitLog(t *testing.T, logs *observer.ObservedLogs, msg string) observer.LoggedEntry {
	t.Helper()
	var e []observer.LoggedEntry
	waitFor(t, "log "+msg, func() bool {
		e = logs.FilterMessage(msg).All()
		return len(e) > 0
	})
	return e[0]
}

func TestNewWithOrigins(t *testing.T) {
	ws := NewWithOrigins(nil)
	tests := []struct {
		give string
		want bool
	}{
		{"https://client.com", true},
		{"https://CLIENT.com:443", true},
		{"https://chat.client.com", true},
		{"https://a.b.client.com", true},
		{"http://client.com", false},
		{"https://evilclient.com", false},
		{"http://localhost:5173", true},
		{"http://localhost", true},
		{"https://localhost:5173", false},
		{"null", false},
	}
	for _, tt := range tests {
		t.Run(tt.give, func(t *testing.T) {
			r := httptest.NewRequest(http.MethodGet, "https://server.com/ws", nil)
			r.Header.Set("Origin", tt.give)
			if got := wstest.OriginAllowed(ws, r); got != tt.want {
				t.Errorf("%q: allowed=%v, want %v", tt.give, got, tt.want)
			}
		})
	}
}

func TestOriginRejectedOverTheWire(t *testing.T) {
	logger, logs := observed()
	ws := NewWithOrigins(logger)
	srv := serve(t, ws, route(ws, echoHandler))
	_, resp, err := websocket.Dial(testCtx(t), wsURL(srv), &websocket.DialOptions{
		HTTPHeader: http.Header{"Origin": {"https://evil.example"}},
	})
	if err == nil || resp == nil || resp.StatusCode != http.StatusForbidden {
		t.Fatalf("dial from evil.example: %v %v, want 403", resp, err)
	}
	e := waitLog(t, logs, "websocket origin rejected")
	if e.Level != zap.DebugLevel {
		t.Errorf("level %v, want debug", e.Level)
	}
	f := e.ContextMap()
	for _, k := range []string{"route", "path", "host", "origin", "remoteAddr", "reason"} {
		if _, ok := f[k]; !ok {
			t.Errorf("field %q missing from %v", k, f)
		}
	}
	if f["origin"] != "https://evil.example" || f["reason"] != "not in AllowedOrigins" || f["route"] != "/ws" {
		t.Errorf("fields = %v", f)
	}
	if st := ws.Stats(); st.RejectedOrigin != 1 {
		t.Errorf("RejectedOrigin = %d", st.RejectedOrigin)
	}
}

func TestOriginFunc(t *testing.T) {
	var set OriginSet
	set.Add("https://Tenant-A.example")
	ws := NewWithOriginFunc(&set)
	for _, tt := range []struct {
		give, host string
		want       bool
	}{
		{"https://tenant-a.example", "api.example", true},
		{"https://tenant-b.example", "api.example", false},
		{"https://api.example", "api.example", false}, // no same-origin default
	} {
		r := httptest.NewRequest(http.MethodGet, "https://"+tt.host+"/ws", nil)
		r.Header.Set("Origin", tt.give)
		if got := wstest.OriginAllowed(ws, r); got != tt.want {
			t.Errorf("%s on %s: allowed=%v, want %v", tt.give, tt.host, got, tt.want)
		}
	}
	set.Add("https://tenant-b.example")
	r := httptest.NewRequest(http.MethodGet, "https://api.example/ws", nil)
	r.Header.Set("Origin", "https://tenant-b.example")
	if !wstest.OriginAllowed(ws, r) {
		t.Error("after Add: refused")
	}
}

func echoHandler(w http.ResponseWriter, r *http.Request) {
	c, err := chiws.Accept(w, r, nil)
	if err != nil {
		return
	}
	echoLoop(c)
}

// TestClockKeepAlive checks the write-only handler: with CloseRead, pongs
// are seen, so a client that reads survives many pings.
func TestClockKeepAlive(t *testing.T) {
	logger, logs := observed()
	ws := chiws.New(chiws.Options{
		KeepAliveInterval: 10 * time.Millisecond,
		KeepAliveTimeout:  testTimeout, // no timing assumption: a live peer always answers in time
		Logger:            logger,
	})
	srv := serve(t, ws, route(ws, Clock(5*time.Millisecond)))
	c, _ := dial(t, wsURL(srv), nil)
	ctx := testCtx(t)
	for i := 0; ws.Stats().PingsSent < 3; i++ {
		// Reading lets the client answer pings; ticks keep coming.
		if _, _, err := c.Read(ctx); err != nil {
			t.Fatalf("read tick %d: %v", i, err)
		}
	}
	if err := c.Close(websocket.StatusNormalClosure, ""); err != nil {
		t.Fatal(err)
	}
	waitLog(t, logs, "websocket closed")
	if st := ws.Stats(); st.KeepAliveTimeouts != 0 || st.EarlyReturns != 0 {
		t.Errorf("Stats = %+v", st)
	}
}

// TestVanishedClient checks that a peer that stops answering is aborted
// after the interval plus the timeout, and the log line of the guide.
func TestVanishedClient(t *testing.T) {
	logger, logs := observed()
	ws := chiws.New(chiws.Options{
		KeepAliveInterval: 10 * time.Millisecond,
		KeepAliveTimeout:  50 * time.Millisecond,
		Logger:            logger,
	})
	srv := serve(t, ws, route(ws, Clock(time.Hour)))
	c, _ := dial(t, wsURL(srv), nil) // never reads: never answers a ping
	_ = c

	e := waitLog(t, logs, "websocket keep-alive timeout; aborting")
	if e.Level != zap.InfoLevel {
		t.Errorf("level = %v, want info", e.Level)
	}
	f := e.ContextMap()
	if f["keepAlive"] != 10*time.Millisecond || f["keepAliveTimeout"] != 50*time.Millisecond {
		t.Errorf("fields = %v", f)
	}
	if _, ok := f["duration"]; !ok {
		t.Errorf("no duration in %v", f)
	}
	closed := waitLog(t, logs, "websocket closed").ContextMap()
	if closed["closedBy"] != "keepalive" || closed["closeCode"] != int64(1006) {
		t.Errorf("close log = %v", closed)
	}
	if st := ws.Stats(); st.KeepAliveTimeouts != 1 || st.Active != 0 || st.EarlyReturns != 0 {
		t.Errorf("Stats = %+v", st)
	}
	// The abort sends no close frame: the client's next read fails
	// without a close status.
	_, _, err := c.Read(testCtx(t))
	if err == nil || websocket.CloseStatus(err) != -1 {
		t.Errorf("client read after abort: %v", err)
	}
}

func TestMobileOverride(t *testing.T) {
	logger, logs := observed()
	ws := NewBehindProxy()
	_ = ws
	ws = chiws.New(chiws.Options{KeepAliveInterval: 30 * time.Second, Logger: logger})
	srv := serve(t, ws, route(ws, Mobile))
	c, _ := dial(t, wsURL(srv), nil)
	f := waitLog(t, logs, "websocket accepted").ContextMap()
	if f["keepAlive"] != 5*time.Minute || f["keepAliveTimeout"] != time.Minute {
		t.Errorf("accepted log = %v", f)
	}
	c.Close(websocket.StatusNormalClosure, "")
}

func TestChatWithoutMiddleware(t *testing.T) {
	logger, logs := observed()
	srv := httptest.NewServer(Chat(logger))
	defer srv.Close()
	_, resp, err := websocket.Dial(testCtx(t), wsURL(srv), nil)
	if err == nil || resp == nil || resp.StatusCode != http.StatusInternalServerError {
		t.Fatalf("dial: %v %v, want 500", resp, err)
	}
	if n := logs.FilterMessage("chiws middleware not mounted").Len(); n != 1 {
		t.Errorf("%d error logs, want 1", n)
	}
}

func TestProgress(t *testing.T) {
	ws := chiws.New(chiws.Options{})
	jobs := make(chan *chiws.Conn)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); Worker(jobs) }() // ends when jobs is closed
	defer wg.Wait()
	defer close(jobs)
	srv := serve(t, ws, route(ws, Progress(jobs)))

	c, _ := dial(t, wsURL(srv), nil)
	ctx := testCtx(t)
	for want := 1; want <= 3; want++ {
		var v map[string]int
		if err := wsjson.Read(ctx, c, &v); err != nil || v["step"] != want {
			t.Fatalf("step %d: %v %v", want, v, err)
		}
	}
	_, _, err := c.Read(ctx)
	var ce websocket.CloseError
	if !errors.As(err, &ce) || ce.Code != websocket.StatusNormalClosure || ce.Reason != "done" {
		t.Fatalf("after the steps: %v, want close 1000 done", err)
	}
	waitFor(t, "handler to return", func() bool { return ws.Stats().Active == 0 })
	if st := ws.Stats(); st.EarlyReturns != 0 {
		t.Errorf("Stats = %+v", st)
	}
}

func TestBroken(t *testing.T) {
	logger, logs := observed()
	ws := chiws.New(chiws.Options{Logger: logger})
	srv := serve(t, ws, route(ws, Broken))
	c, _ := dial(t, wsURL(srv), nil)
	ctx := testCtx(t)
	var err error
	for err == nil {
		_, _, err = c.Read(ctx) // "hello" may or may not come first
	}
	var ce websocket.CloseError
	if !errors.As(err, &ce) || ce.Code != websocket.StatusInternalError || ce.Reason != "handler returned" {
		t.Fatalf("read: %v, want close 1011 handler returned", err)
	}
	e := waitLog(t, logs, "websocket handler returned with the socket open; closed with 1011 "+
		"(call Conn.Wait to hand the socket to another goroutine)")
	if e.Level != zap.WarnLevel {
		t.Errorf("level = %v", e.Level)
	}
	closed := waitLog(t, logs, "websocket closed").ContextMap()
	if closed["closedBy"] != "handler-return" || closed["closeCode"] != int64(1011) {
		t.Errorf("close log = %v", closed)
	}
	if st := ws.Stats(); st.EarlyReturns != 1 {
		t.Errorf("EarlyReturns = %d", st.EarlyReturns)
	}
}

func TestPanic(t *testing.T) {
	logger, logs := observed()
	ws := chiws.New(chiws.Options{Logger: logger})
	r := chi.NewRouter()
	r.Use(ws.Handler)
	r.Get("/ws", func(w http.ResponseWriter, r *http.Request) {
		if _, err := chiws.Accept(w, r, nil); err != nil {
			return
		}
		panic("boom")
	})
	r.Get("/ok", echoHandler)
	srv := serve(t, ws, r)
	c, _ := dial(t, wsURL(srv), nil)
	_, _, err := c.Read(testCtx(t))
	var ce websocket.CloseError
	if !errors.As(err, &ce) || ce.Code != websocket.StatusInternalError || ce.Reason != "internal error" {
		t.Fatalf("read: %v, want close 1011 internal error", err)
	}
	e := waitLog(t, logs, "websocket handler panicked; closing with 1011")
	if e.Level != zap.ErrorLevel || e.ContextMap()["panic"] != "boom" {
		t.Errorf("panic log = %v %v", e.Level, e.ContextMap())
	}
	// The server keeps serving.
	ok, _ := dial(t, strings.TrimSuffix(wsURL(srv), "/ws")+"/ok", nil)
	if err := ok.Write(testCtx(t), websocket.MessageText, []byte("x")); err != nil {
		t.Fatal(err)
	}
	if _, p, err := ok.Read(testCtx(t)); err != nil || string(p) != "x" {
		t.Fatalf("echo after panic: %q %v", p, err)
	}
	ok.Close(websocket.StatusNormalClosure, "")
	if st := ws.Stats(); st.Panics != 1 {
		t.Errorf("Panics = %d", st.Panics)
	}
}

// TestTimeoutRouter checks that a socket outlives chi's Timeout, that
// Conn.Context has no deadline, and that Timeout's late 504 does not reach
// the hijacked connection when ws.Handler is mounted first.
func TestTimeoutRouter(t *testing.T) {
	for _, tt := range []struct {
		name         string
		handlerFirst bool
		wantLog      bool
	}{
		{"ws.Handler first", true, false},
		{"Timeout first", false, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ws := chiws.New(chiws.Options{})
			expired := make(chan struct{})
			h := func(w http.ResponseWriter, r *http.Request) {
				c, err := chiws.Accept(w, r, nil)
				if err != nil {
					return
				}
				<-r.Context().Done() // Timeout's deadline
				if _, ok := c.Context().Deadline(); ok || c.Context().Err() != nil {
					t.Error("Conn.Context has a deadline or is done")
				}
				close(expired)
				echoLoop(c)
			}
			var router http.Handler
			if tt.handlerFirst {
				router = TimeoutRouter(ws, 10*time.Millisecond, h)
			} else {
				r := chi.NewRouter()
				r.Use(middleware.Timeout(10 * time.Millisecond))
				r.Use(ws.Handler)
				r.Get("/ws", h)
				router = r
			}
			var errLog wstest.SyncBuffer
			srv := httptest.NewUnstartedServer(router)
			srv.Config.ErrorLog = log.New(&errLog, "", 0)
			srv.Start()
			t.Cleanup(func() {
				ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
				defer cancel()
				ws.Shutdown(ctx)
				srv.Close()
			})

			c, _ := dial(t, wsURL(srv), nil)
			<-expired
			ctx := testCtx(t)
			if err := c.Write(ctx, websocket.MessageText, []byte("still here")); err != nil {
				t.Fatal(err)
			}
			if _, p, err := c.Read(ctx); err != nil || string(p) != "still here" {
				t.Fatalf("echo after the request deadline: %q %v", p, err)
			}
			c.Close(websocket.StatusNormalClosure, "")
			waitFor(t, "handler", func() bool { return ws.Stats().Active == 0 })
			if tt.wantLog {
				waitFor(t, "net/http log", func() bool { return strings.Contains(errLog.String(), "hijacked") })
			}
			if got := strings.Contains(errLog.String(), "hijacked"); got != tt.wantLog {
				t.Errorf("server error log %q: hijacked mentioned=%v, want %v", errLog.String(), got, tt.wantLog)
			}
		})
	}
}

// publishOnce guards expvar.Publish, which panics when a name is reused
// (go test -count=N runs the test N times in one process).
var publishOnce sync.Once

func TestPublishStats(t *testing.T) {
	ws := chiws.New(chiws.Options{})
	publishOnce.Do(func() { PublishStats(ws) })
	got := expvar.Get("websockets").String()
	if !strings.Contains(got, `"Active":0`) || !strings.Contains(got, `"KeepAliveTimeouts":0`) {
		t.Errorf("expvar = %s", got)
	}
}

func TestSampleRouter(t *testing.T) {
	srv := httptest.NewServer(SampleRouter())
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/ws")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf("GET /ws without upgrade: %d, want 400", resp.StatusCode)
	}
	_, resp, err = websocket.Dial(testCtx(t), wsURL(srv), &websocket.DialOptions{
		HTTPHeader: http.Header{"Origin": {"https://evil.example"}},
	})
	if err == nil || resp == nil || resp.StatusCode != http.StatusForbidden {
		t.Errorf("evil origin: %v %v, want 403", resp, err)
	}
	c, _ := dial(t, wsURL(srv), &websocket.DialOptions{
		HTTPHeader: http.Header{"Origin": {"https://client.com"}},
	})
	ctx := testCtx(t)
	c.Write(ctx, websocket.MessageText, []byte("a"))
	if _, p, err := c.Read(ctx); err != nil || string(p) != "a" {
		t.Fatalf("echo: %q %v", p, err)
	}
	c.Close(websocket.StatusNormalClosure, "")
}

func TestSubprotocolAndCompression(t *testing.T) {
	ws := chiws.New(chiws.Options{})
	r := chi.NewRouter()
	r.Use(ws.Handler)
	r.Get("/ws", Subprotocol)
	r.Get("/z", Compressed)
	srv := serve(t, ws, r)

	c, _ := dial(t, wsURL(srv), &websocket.DialOptions{Subprotocols: []string{"chat.v1", "chat.v2"}})
	if got := c.Subprotocol(); got != "chat.v2" {
		t.Errorf("subprotocol %q, want chat.v2", got)
	}
	c.Close(websocket.StatusNormalClosure, "")
	c, _ = dial(t, wsURL(srv), &websocket.DialOptions{Subprotocols: []string{"chat.v1"}})
	if got := c.Subprotocol(); got != "" {
		t.Errorf("subprotocol %q, want none", got)
	}
	c.Close(websocket.StatusNormalClosure, "")

	c, resp := dial(t, strings.TrimSuffix(wsURL(srv), "/ws")+"/z", &websocket.DialOptions{
		CompressionMode: websocket.CompressionContextTakeover,
	})
	if ext := resp.Header.Get("Sec-WebSocket-Extensions"); !strings.Contains(ext, "permessage-deflate") ||
		!strings.Contains(ext, "server_no_context_takeover") {
		t.Errorf("extensions %q", ext)
	}
	c.Close(websocket.StatusNormalClosure, "")
}

// TestThrottledRouter checks the Throttle trap of docs/lifecycle.md: with
// Throttle mounted for every route, one open socket holds Throttle(1)'s
// only token and a plain GET gets 429; mounted on the HTTP group only, the
// GET is served while the socket stays open.
func TestThrottledRouter(t *testing.T) {
	api := func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("ok")) }
	for _, tt := range []struct {
		name string
		use  func(ws *chiws.Middleware) http.Handler // nil result: ThrottledRouter's own
		want int
	}{
		{"Throttle on every route", func(ws *chiws.Middleware) http.Handler {
			r := chi.NewRouter()
			r.Use(ws.Handler, middleware.Throttle(1))
			r.Get("/ws", echoHandler)
			r.Get("/api/items", api)
			return r
		}, http.StatusTooManyRequests},
		{"Throttle on the HTTP group", func(*chiws.Middleware) http.Handler { return nil }, http.StatusOK},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ws, h := ThrottledRouter(api, echoHandler)
			if r := tt.use(ws); r != nil {
				h = r
			}
			srv := serve(t, ws, h)
			c, _ := dial(t, wsURL(srv), nil)
			ctx := testCtx(t)
			if err := c.Write(ctx, websocket.MessageText, []byte("hi")); err != nil {
				t.Fatal(err)
			}
			if _, _, err := c.Read(ctx); err != nil {
				t.Fatal(err) // the socket is open and its handler running
			}
			resp, err := http.Get(srv.URL + "/api/items")
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != tt.want {
				t.Errorf("GET /api/items with a socket open: %d, want %d", resp.StatusCode, tt.want)
			}
			c.Close(websocket.StatusNormalClosure, "")
		})
	}
}

// TestCloseReason checks the causes CloseReason tells apart.
func TestCloseReason(t *testing.T) {
	reasons := make(chan string, 1)
	ws := chiws.New(chiws.Options{})
	srv := serve(t, ws, route(ws, func(w http.ResponseWriter, r *http.Request) {
		c, err := chiws.Accept(w, r, nil)
		if err != nil {
			return
		}
		go echoLoop(c)
		reasons <- CloseReason(c)
	}))
	c, _ := dial(t, wsURL(srv), nil)
	c.Close(4000, "bye")
	select {
	case got := <-reasons:
		if got != "the client closed with 4000" {
			t.Errorf("CloseReason = %q", got)
		}
	case <-testCtx(t).Done():
		t.Fatal("socket did not end")
	}
}

// TestEmbeddedChat pins what docs/lifecycle.md says of calls on the
// embedded *websocket.Conn: the echo works, but a client's normal close,
// read through wsjson, ends the socket as a lost connection (1006), where
// Chat's ReadJSON records the client's close.
func TestEmbeddedChat(t *testing.T) {
	for _, tt := range []struct {
		name     string
		give     http.HandlerFunc
		wantBy   string
		wantCode int64
	}{
		{"ReadJSON", Chat(zap.NewNop()), "client", 1000},
		{"wsjson on c.Conn", EmbeddedChat, "connection-lost", 1006},
	} {
		t.Run(tt.name, func(t *testing.T) {
			logger, logs := observed()
			ws := chiws.New(chiws.Options{Logger: logger})
			srv := serve(t, ws, route(ws, tt.give))
			c, _ := dial(t, wsURL(srv), nil)
			ctx := testCtx(t)
			if err := wsjson.Write(ctx, c, Message{Text: "hi"}); err != nil {
				t.Fatal(err)
			}
			var got Message
			if err := wsjson.Read(ctx, c, &got); err != nil || got.Text != "HI" {
				t.Fatalf("got %+v, %v", got, err)
			}
			if err := c.Close(websocket.StatusNormalClosure, ""); err != nil {
				t.Fatal(err)
			}
			closed := waitLog(t, logs, "websocket closed").ContextMap()
			if closed["closedBy"] != tt.wantBy || closed["closeCode"] != tt.wantCode {
				t.Errorf("close log = %v, want closedBy %s, code %d", closed, tt.wantBy, tt.wantCode)
			}
			if st := ws.Stats(); st.EarlyReturns != 0 {
				t.Errorf("Stats = %+v", st)
			}
		})
	}
}

// TestRoomRouter runs the hub example of docs/broadcast.md: a message from
// one member reaches both members of the room, with its type, and the
// hub's Shutdown closes them with 1001.
func TestRoomRouter(t *testing.T) {
	b := broadcast.NewMemory()
	defer b.Close()
	hub, rooms := RoomRouter(b)
	ws := chiws.New(chiws.Options{})
	srv := serve(t, ws, ws.Handler(rooms))
	url := strings.TrimSuffix(wsURL(srv), "/ws") + "/room/go"
	alice, _ := dial(t, url, nil)
	bob, _ := dial(t, url, nil)
	waitFor(t, "both members", func() bool { return hub.Len("room.go") == 2 })

	ctx := testCtx(t)
	if err := alice.Write(ctx, websocket.MessageBinary, []byte("hello")); err != nil {
		t.Fatal(err)
	}
	for name, c := range map[string]*websocket.Conn{"alice": alice, "bob": bob} {
		if typ, p, err := c.Read(ctx); err != nil || typ != websocket.MessageBinary || string(p) != "hello" {
			t.Errorf("%s read %v %q %v", name, typ, p, err)
		}
	}
	closed := make(chan error, 2)
	for _, c := range []*websocket.Conn{alice, bob} {
		go func() { // ends with the close handshake, which it answers
			_, _, err := c.Read(ctx)
			closed <- err
		}()
	}
	if err := hub.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := <-closed; websocket.CloseStatus(err) != websocket.StatusGoingAway {
			t.Errorf("after Shutdown: %v, want 1001", err)
		}
	}
}

// TestChatRouter runs the chat example of docs/broadcast.md: a newcomer
// gets the history before a message published while it was read, a
// message reaches the others and not its sender, and the member's ID
// names it in the close log.
func TestChatRouter(t *testing.T) {
	b := broadcast.NewMemory()
	defer b.Close()
	var hub *broadcast.Hub
	var calls atomic.Int32
	history := func(room string) [][]byte {
		if calls.Add(1) == 1 { // a message arrives while alice's history is read
			if err := hub.Publish(context.Background(), room, websocket.MessageText, []byte("live")); err != nil {
				t.Error(err)
			}
		}
		return [][]byte{[]byte("old 1"), []byte("old 2")}
	}
	hub, rooms := ChatRouter(b, history)
	logger, logs := observed()
	ws := chiws.New(chiws.Options{Logger: logger})
	srv := serve(t, ws, ws.Handler(rooms))
	url := strings.TrimSuffix(wsURL(srv), "/ws") + "/chat/go"
	ctx := testCtx(t)
	expect := func(name string, c *websocket.Conn, want ...string) {
		t.Helper()
		for _, w := range want {
			if _, p, err := c.Read(ctx); err != nil || string(p) != w {
				t.Fatalf("%s read %q, %v; want %q", name, p, err, w)
			}
		}
	}
	as := func(user string) *websocket.DialOptions {
		return &websocket.DialOptions{HTTPHeader: http.Header{"X-User": {user}}}
	}
	alice, _ := dial(t, url, as("alice"))
	expect("alice", alice, "old 1", "old 2", "live")
	bob, _ := dial(t, url, as("bob"))
	expect("bob", bob, "old 1", "old 2")
	waitFor(t, "both members", func() bool { return hub.Len("chat.go") == 2 })

	if err := alice.Write(ctx, websocket.MessageText, []byte("hi")); err != nil {
		t.Fatal(err)
	}
	expect("bob", bob, "hi")
	if err := bob.Write(ctx, websocket.MessageText, []byte("cursor:3,4")); err != nil {
		t.Fatal(err)
	}
	// On the Memory broker, "hi" was queued for everyone before bob read
	// it: alice's next message shows she never got her own.
	expect("alice", alice, "cursor:3,4")

	bob.Close(websocket.StatusNormalClosure, "")
	if by := waitLog(t, logs, "websocket closed").ContextMap()["member"]; by != "bob" {
		t.Errorf("close log names member %v, want bob", by)
	}
	alice.Close(websocket.StatusNormalClosure, "")
	if err := hub.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestJoinAndPublish runs the README's broadcast example: the socket that
// joined receives what was published.
func TestJoinAndPublish(t *testing.T) {
	ws := chiws.New(chiws.Options{})
	srv := serve(t, ws, route(ws, func(w http.ResponseWriter, r *http.Request) {
		c, err := chiws.Accept(w, r, nil)
		if err != nil {
			return
		}
		if err := JoinAndPublish(c.Context(), c); err != nil {
			c.Close(websocket.StatusInternalError, err.Error())
			return
		}
		c.CloseRead(c.Context())
		_ = c.Wait(context.Background())
	}))
	c, _ := dial(t, wsURL(srv), nil)
	if _, p, err := c.Read(testCtx(t)); err != nil || string(p) != "hi" {
		t.Fatalf("read %q %v, want hi", p, err)
	}
	c.Close(websocket.StatusNormalClosure, "")
	waitFor(t, "handler", func() bool { return ws.Stats().Active == 0 })
}

// TestNewServer checks the settings docs/http2.md recommends.
func TestNewServer(t *testing.T) {
	srv := NewServer(http.NotFoundHandler())
	if srv.ReadHeaderTimeout <= 0 || srv.IdleTimeout <= 0 {
		t.Errorf("ReadHeaderTimeout %v, IdleTimeout %v: want both set", srv.ReadHeaderTimeout, srv.IdleTimeout)
	}
	if h2 := srv.HTTP2; h2 == nil || h2.MaxReceiveBufferPerStream != 64<<10 || h2.MaxReceiveBufferPerConnection != 4<<20-1 {
		t.Errorf("HTTP2 = %+v", srv.HTTP2)
	}
}

// TestReadmeRoutes checks the README's Throttle example: a plain GET is
// served while a socket is open.
func TestReadmeRoutes(t *testing.T) {
	ws := chiws.New(chiws.Options{MaxConnections: 10})
	api := func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("ok")) }
	srv := serve(t, ws, ReadmeRoutes(ws, echoHandler, api))
	c, _ := dial(t, wsURL(srv), nil)
	ctx := testCtx(t)
	if err := c.Write(ctx, websocket.MessageText, []byte("hi")); err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.Read(ctx); err != nil {
		t.Fatal(err)
	}
	resp, err := http.Get(srv.URL + "/api/items")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("GET /api/items with a socket open: %d", resp.StatusCode)
	}
	c.Close(websocket.StatusNormalClosure, "")
}
