package chiws_test

import (
	"bufio"
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
	"go.uber.org/zap"
)

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

// TestHandlerFaultsUnderConcurrency runs many sockets at once through
// handlers that panic, return early or never read, and checks each socket
// gets the outcome the middleware defines, counted and logged once, with
// the server still serving.
func TestHandlerFaultsUnderConcurrency(t *testing.T) {
	const n = 25
	tests := []struct {
		name       string
		handler    func(c *chiws.Conn) error
		wantCode   websocket.StatusCode // -1: aborted without a close frame
		wantLog    string
		wantStats  func(chiws.Stats) bool
		clientSend bool
	}{
		{
			name: "panic after a read",
			handler: func(c *chiws.Conn) error {
				if _, _, err := c.Read(c.Context()); err != nil {
					return err
				}
				panic("handler bug")
			},
			wantCode:   websocket.StatusInternalError,
			wantLog:    "websocket handler panicked; closing with 1011",
			wantStats:  func(st chiws.Stats) bool { return st.Panics == n && st.EarlyReturns == 0 },
			clientSend: true,
		},
		{
			name:      "early return",
			handler:   func(c *chiws.Conn) error { return nil },
			wantCode:  websocket.StatusInternalError,
			wantLog:   "websocket handler returned with the socket open; closed with 1011 (call Conn.Wait to hand the socket to another goroutine)",
			wantStats: func(st chiws.Stats) bool { return st.EarlyReturns == n && st.Panics == 0 },
		},
		{
			// Documented: pongs are only seen while someone reads, so a
			// handler that never reads loses a live peer to the keep-alive.
			name:      "never reads",
			handler:   func(c *chiws.Conn) error { return c.Wait(context.Background()) },
			wantCode:  -1,
			wantLog:   "websocket keep-alive timeout; aborting",
			wantStats: func(st chiws.Stats) bool { return st.KeepAliveTimeouts == n && st.EarlyReturns == 0 },
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			calls := newCalls()
			ws, srv, logs := relServer(t, chiws.Options{
				KeepAliveInterval: 100 * time.Millisecond,
				KeepAliveTimeout:  300 * time.Millisecond,
			}, nil, func(r chi.Router) {
				r.HandleFunc("/ws", calls.accepted(func(c *chiws.Conn) error {
					return tt.handler(c)
				}))
				r.Get("/echo", echo)
			})
			ctx := testCtx(t)
			var wg sync.WaitGroup
			codes := make(chan websocket.StatusCode, n)
			for i := 0; i < n; i++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					c, _, err := websocket.Dial(ctx, wsURL(srv, "/ws"), nil)
					if err != nil {
						t.Error(err)
						return
					}
					defer c.CloseNow()
					if tt.clientSend {
						_ = c.Write(ctx, websocket.MessageText, []byte("boom"))
					}
					_, _, err = c.Read(ctx) // answers pings while waiting
					codes <- closeStatus(err)
				}()
			}
			wg.Wait()
			close(codes)
			for code := range codes {
				if code != tt.wantCode {
					t.Errorf("client saw close code %d, want %d", code, tt.wantCode)
				}
			}
			calls.await(t, n)
			waitActive(t, ws, 0)
			// The middleware counts and logs each socket once it is
			// closed, a moment after the handler returned.
			waitFor(t, "one close log per socket", func() bool { return logs.FilterMessage("websocket closed").Len() == n })
			if st := ws.Stats(); !tt.wantStats(st) {
				t.Errorf("stats: %+v", st)
			}
			if got := logs.FilterMessage(tt.wantLog).Len(); got != n {
				t.Errorf("%d %q logs, want %d", got, tt.wantLog, n)
			}
			// The server still serves.
			c := dial(t, wsURL(srv, "/echo"), nil)
			if err := c.Write(ctx, websocket.MessageText, []byte("alive")); err != nil {
				t.Fatal(err)
			}
			if _, p, err := c.Read(ctx); err != nil || string(p) != "alive" {
				t.Fatalf("echo after faults: %q %v", p, err)
			}
		})
	}
}

// TestReadJSONReadLimitIsNotEarlyReturn: a handler reading JSON through
// Conn returns after coder/websocket closed with 1009; that is not an
// early return. (Through the embedded Conn, wsjson's read is not seen:
// docs/lifecycle.md, snippets' EmbeddedChat test.)
func TestReadJSONReadLimitIsNotEarlyReturn(t *testing.T) {
	ws, srv, logs := relServer(t, chiws.Options{ReadLimit: 16}, nil, func(r chi.Router) {
		r.Get("/json", func(w http.ResponseWriter, r *http.Request) {
			c, err := chiws.Accept(w, r, nil)
			if err != nil {
				return
			}
			var v any
			for c.ReadJSON(c.Context(), &v) == nil {
			}
		})
	})
	cc := dial(t, wsURL(srv, "/json"), nil)
	ctx := testCtx(t)
	cc.Write(ctx, websocket.MessageText, []byte(`"`+strings.Repeat("x", 100)+`"`))
	if _, _, err := cc.Read(ctx); closeStatus(err) != websocket.StatusMessageTooBig {
		t.Fatalf("client got %v, want 1009", err)
	}
	waitFor(t, "closed log", func() bool { return logs.FilterMessage("websocket closed").Len() == 1 })
	if s := ws.Stats(); s.EarlyReturns != 0 {
		t.Fatalf("counted as an early return: %+v", s)
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

// TestAcceptCannotHijack: behind http.TimeoutHandler, whose writer cannot
// hijack, Accept answers 501 before any 101 leaves the server, and logs
// which writer is in the way. (coder/websocket would write the 101 first,
// into a buffer, and the client would see a socket that never works.)
func TestAcceptCannotHijack(t *testing.T) {
	logger, logs := observedLogger()
	ws := chiws.New(chiws.Options{Logger: logger})
	accepted := make(chan error, 1)
	r := chi.NewRouter()
	r.Get("/ws", func(w http.ResponseWriter, r *http.Request) {
		_, err := chiws.Accept(w, r, nil)
		accepted <- err
	})
	srv := httptest.NewServer(http.TimeoutHandler(ws.Handler(r), testTimeout, "timeout"))
	defer srv.Close()
	c, resp, err := websocket.Dial(testCtx(t), wsURL(srv, "/ws"), nil)
	if err == nil {
		c.CloseNow()
		t.Fatal("the upgrade succeeded behind http.TimeoutHandler")
	}
	if resp == nil || resp.StatusCode != http.StatusNotImplemented {
		t.Fatalf("response %v, want 501", resp)
	}
	if err := <-accepted; !errors.Is(err, http.ErrNotSupported) {
		t.Errorf("Accept = %v, want http.ErrNotSupported", err)
	}
	entries := logs.FilterMessageSnippet("cannot hijack").All()
	if len(entries) != 1 || !strings.Contains(entries[0].ContextMap()["writer"].(string), "timeoutWriter") {
		t.Errorf("logs: %v", logs.All())
	}
}

// bypass hijacks the server's connection directly, skipping the
// middleware's writer below it.
type bypass struct{ http.ResponseWriter }

func (b bypass) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	w := b.ResponseWriter
	for {
		u, ok := w.(interface{ Unwrap() http.ResponseWriter })
		if !ok {
			return w.(http.Hijacker).Hijack()
		}
		w = u.Unwrap()
	}
}

// TestAcceptHijackBypassed: a wrapper that hijacks around the middleware's
// writer would leave chiws blind to the connection; Accept refuses the
// socket (1011) and says why.
func TestAcceptHijackBypassed(t *testing.T) {
	logger, logs := observedLogger()
	accepted := make(chan error, 1)
	ws, srv := server(t, chiws.Options{Logger: logger}, func(r chi.Router) {
		r.Get("/ws", func(w http.ResponseWriter, r *http.Request) {
			_, err := chiws.Accept(bypass{w}, r, nil)
			accepted <- err
		})
	})
	c := dial(t, wsURL(srv, "/ws"), nil)
	if _, _, err := c.Read(testCtx(t)); websocket.CloseStatus(err) != websocket.StatusInternalError {
		t.Fatalf("read = %v, want 1011", err)
	}
	if err := <-accepted; !errors.Is(err, chiws.ErrHijackBypassed) {
		t.Errorf("Accept = %v, want ErrHijackBypassed", err)
	}
	if logs.FilterMessageSnippet(chiws.ErrHijackBypassed.Error()).Len() != 1 {
		t.Errorf("logs: %v", logs.All())
	}
	if s := ws.Stats(); s.Active != 0 {
		t.Errorf("stats %+v", s)
	}
}

// TestAbortHandlerAfterAccept: http.ErrAbortHandler is net/http's "abort
// quietly": the socket is closed, the panic goes on to net/http (or chi's
// Recoverer, which re-panics it), and nothing is logged as a panic.
func TestAbortHandlerAfterAccept(t *testing.T) {
	logger, logs := observedLogger()
	returned := make(chan any, 1)
	ws, srv := server(t, chiws.Options{Logger: logger}, func(r chi.Router) {
		r.Use(func(next http.Handler) http.Handler {
			return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				defer func() {
					p := recover()
					returned <- p
					if p != nil {
						panic(p) // on to net/http, which aborts quietly
					}
				}()
				next.ServeHTTP(w, r)
			})
		})
		r.Get("/ws", func(w http.ResponseWriter, r *http.Request) {
			if _, err := chiws.Accept(w, r, nil); err != nil {
				return
			}
			panic(http.ErrAbortHandler)
		})
	})
	c := dial(t, wsURL(srv, "/ws"), nil)
	if _, _, err := c.Read(testCtx(t)); err == nil {
		t.Fatal("read succeeded on an aborted socket")
	}
	if p := <-returned; p != http.ErrAbortHandler {
		t.Fatalf("panic seen above the middleware: %v, want http.ErrAbortHandler", p)
	}
	waitActive(t, ws, 0)
	if s := ws.Stats(); s.Panics != 0 {
		t.Errorf("stats %+v", s)
	}
	if n := logs.FilterMessageSnippet("panicked").Len(); n != 0 {
		t.Errorf("ErrAbortHandler logged as a panic: %v", logs.All())
	}
}

// TestEarlyReturnPeerAnswersOtherCode: a peer may answer the middleware's
// 1011 with a code of its own (some clients always answer 1000); the
// handler still returned early, and the log and the cause say so.
func TestEarlyReturnPeerAnswersOtherCode(t *testing.T) {
	logger, logs := observedLogger()
	ctxs := make(chan context.Context, 1)
	ws, srv := server(t, chiws.Options{Logger: logger}, func(r chi.Router) {
		r.Get("/ws", func(w http.ResponseWriter, r *http.Request) {
			if c, err := chiws.Accept(w, r, nil); err == nil {
				ctxs <- c.Context()
			}
		})
	})
	c, err := wstest.Handshake(hostOf(srv), "/ws", "")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(testTimeout))
	f, err := c.ReadFrame()
	if err != nil || f.Opcode != wstest.OpClose || f.CloseCode() != 1011 {
		t.Fatalf("frame %v %v, want a 1011 close", f, err)
	}
	if err := c.WriteFrame(wstest.Frame{Fin: true, Opcode: wstest.OpClose, Masked: true, Payload: wstest.ClosePayload(1000, "")}); err != nil {
		t.Fatal(err)
	}
	ctx := <-ctxs
	<-ctx.Done()
	if cause := context.Cause(ctx); !errors.Is(cause, chiws.ErrHandlerReturned) {
		t.Errorf("cause %v, want ErrHandlerReturned", cause)
	}
	waitFor(t, "close log", func() bool { return logs.FilterMessage("websocket closed").Len() == 1 })
	if f := logs.FilterMessage("websocket closed").All()[0].ContextMap(); f["closedBy"] != "handler-return" || f["closeCode"] != int64(1011) {
		t.Errorf("close log %v", f)
	}
	if st := ws.Stats(); st.EarlyReturns != 1 {
		t.Errorf("stats %+v", st)
	}
}

// TestAcceptAfterShutdown: an upgrade whose handler calls Accept after
// Shutdown began is answered 503 before any 101, and nothing is logged
// after Shutdown returned.
func TestAcceptAfterShutdown(t *testing.T) {
	logger, logs := observedLogger()
	entered := make(chan struct{})
	proceed := make(chan struct{})
	accepted := make(chan error, 1)
	ws, srv := server(t, chiws.Options{Logger: logger}, func(r chi.Router) {
		r.Get("/ws", func(w http.ResponseWriter, r *http.Request) {
			close(entered)
			<-proceed
			_, err := chiws.Accept(w, r, nil)
			accepted <- err
		})
	})
	status := make(chan int, 1)
	go func() { // owned by the test, which receives from status
		c, resp, err := websocket.Dial(testCtx(t), wsURL(srv, "/ws"), nil)
		if err == nil {
			c.CloseNow()
			status <- http.StatusSwitchingProtocols
			return
		}
		if resp == nil {
			status <- 0
			return
		}
		status <- resp.StatusCode
	}()
	<-entered
	shutdownDone := make(chan error, 1)
	go func() { // owned by the test, which receives from shutdownDone
		ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
		defer cancel()
		shutdownDone <- ws.Shutdown(ctx)
	}()
	waitFor(t, "Shutdown to begin", func() bool {
		return logs.FilterMessage("websocket shutdown: closing sockets").Len() == 1
	})
	close(proceed)
	if err := <-accepted; !errors.Is(err, chiws.ErrShuttingDown) {
		t.Errorf("Accept = %v, want ErrShuttingDown", err)
	}
	if got := <-status; got != http.StatusServiceUnavailable {
		t.Errorf("client got %d, want 503", got)
	}
	if err := <-shutdownDone; err != nil {
		t.Errorf("Shutdown: %v", err)
	}
	if n := logs.FilterMessage("websocket closed").Len(); n != 0 {
		t.Errorf("%d close logs for a socket that was never opened", n)
	}
}

// hijackFails is a writer below the middleware (an outer middleware's)
// whose Hijack fails, as a connection already taken would.
type hijackFails struct{ http.ResponseWriter }

func (hijackFails) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	return nil, nil, errors.New("the connection is taken")
}

// TestAcceptFailedLogged: when coder/websocket's Accept fails after the
// middleware validated the handshake (here its hijack fails), Accept
// returns the error, the client gets coder/websocket's 500 and no 101,
// and "websocket accept failed" is logged at Error with the error and
// the request's fields; no socket is counted.
func TestAcceptFailedLogged(t *testing.T) {
	logger, logs := observedLogger()
	ws := chiws.New(chiws.Options{Logger: logger})
	accepted := make(chan error, 1)
	r := chi.NewRouter()
	r.Use(func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			next.ServeHTTP(hijackFails{w}, r)
		})
	}, ws.Handler)
	r.Get("/ws", func(w http.ResponseWriter, r *http.Request) {
		_, err := chiws.Accept(w, r, nil)
		accepted <- err
	})
	srv := httptest.NewUnstartedServer(r)
	var errLog wstest.SyncBuffer
	srv.Config.ErrorLog = log.New(&errLog, "", 0)
	srv.Start()
	defer srv.Close()
	if status := dialStatus(t, wsURL(srv, "/ws"), nil); status != http.StatusInternalServerError {
		t.Errorf("status %d, want coder/websocket's 500", status)
	}
	var err error
	select {
	case err = <-accepted:
	case <-testCtx(t).Done():
		t.Fatal("Accept never returned")
	}
	if err == nil || !strings.Contains(err.Error(), "the connection is taken") {
		t.Errorf("Accept = %v, want the hijack's error", err)
	}
	entries := logs.FilterMessage("websocket accept failed").All()
	if len(entries) != 1 {
		t.Fatalf("%d accept-failed logs, want 1; logs: %v", len(entries), messages(logs))
	}
	if e := entries[0]; e.Level != zap.ErrorLevel {
		t.Errorf("logged at %v, want Error", e.Level)
	}
	f := entries[0].ContextMap()
	if s, _ := f["error"].(string); !strings.Contains(s, "the connection is taken") || f["route"] != "/ws" {
		t.Errorf("accept-failed log %v, want the error and the route", f)
	}
	if st := ws.Stats(); st.Active != 0 || st.Accepted != 0 {
		t.Errorf("stats %+v, want no socket", st)
	}
	if n := logs.FilterMessage("websocket closed").Len(); n != 0 {
		t.Errorf("%d close logs for a socket never accepted", n)
	}
	if s := errLog.String(); s != "" {
		t.Errorf("net/http logged: %s", s) // a superfluous WriteHeader: a 101 went out
	}
}
