package chiws_test

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chiws/chiws"
	"github.com/chiws/chiws/internal/wstest"
	"github.com/coder/websocket"
	"github.com/go-chi/chi/v5"
	"go.uber.org/goleak"
)

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

// TestShutdownUnderLoad opens 1,000 sockets that echo continuously, calls
// Shutdown mid-traffic, and checks every client gets 1001, every handler
// returns, Shutdown beats its deadline, and no goroutine or file descriptor
// is left behind.
func TestShutdownUnderLoad(t *testing.T) {
	n := 1000
	if testing.Short() {
		n = 100
	}
	ignore := goleak.IgnoreCurrent()
	fdsBefore := openFDs(t)

	calls := newCalls()
	logger, _ := observedLogger()
	ws := chiws.New(chiws.Options{Logger: logger, KeepAliveInterval: -1})
	r := chi.NewRouter()
	r.Use(ws.Handler)
	r.HandleFunc("/ws", calls.wrap(echoErr))
	srv := httptest.NewServer(r)
	defer srv.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var (
		clients   sync.WaitGroup
		ready     sync.WaitGroup
		echoed    atomic.Int64
		mu        sync.Mutex
		codes     = map[websocket.StatusCode]int{}
		dialErrs  atomic.Int64
		wrongEcho atomic.Int64
	)
	ready.Add(n)
	dialSem := make(chan struct{}, 64) // bounded dial concurrency: no SYN floods
	for i := 0; i < n; i++ {
		clients.Add(1)
		go func() {
			defer clients.Done()
			dialSem <- struct{}{}
			c, _, err := websocket.Dial(ctx, wsURL(srv, "/ws"), nil)
			<-dialSem
			if err != nil {
				dialErrs.Add(1)
				ready.Done()
				return
			}
			defer c.CloseNow()
			for seq := 0; ; seq++ {
				msg := strconv.Itoa(i) + ":" + strconv.Itoa(seq)
				err := c.Write(ctx, websocket.MessageText, []byte(msg))
				if err == nil {
					var p []byte
					_, p, err = c.Read(ctx)
					if err == nil && string(p) != msg {
						wrongEcho.Add(1)
					}
				}
				if err != nil {
					mu.Lock()
					codes[closeStatus(err)]++
					mu.Unlock()
					if seq == 0 {
						ready.Done()
					}
					return
				}
				if seq == 0 {
					echoed.Add(1)
					ready.Done()
				}
			}
		}()
	}
	ready.Wait()
	if e := dialErrs.Load(); e != 0 {
		t.Fatalf("%d dials failed", e)
	}
	if got := ws.Stats().Active; got != n {
		t.Fatalf("Active = %d, want %d", got, n)
	}
	peakFDs := openFDs(t)

	sctx, scancel := context.WithTimeout(context.Background(), time.Minute)
	defer scancel()
	start := time.Now()
	if err := ws.Shutdown(sctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	took := time.Since(start)
	clients.Wait()
	errs := calls.await(t, n)
	t.Logf("Shutdown of %d sockets mid-echo took %v; fds before %d, peak %d", n, took, fdsBefore, peakFDs)

	if codes[websocket.StatusGoingAway] != n {
		t.Errorf("client close codes %v, want %d x 1001", codes, n)
	}
	if w := wrongEcho.Load(); w != 0 {
		t.Errorf("%d wrong echoes", w)
	}
	for _, err := range errs {
		if err == nil {
			t.Fatal("a handler returned without an error")
		}
	}
	if st := ws.Stats(); st.Active != 0 || st.EarlyReturns != 0 || st.Panics != 0 {
		t.Errorf("stats: %+v", st)
	}
	// New sockets are refused once shut down.
	if got := dialStatus(t, wsURL(srv, "/ws"), nil); got != http.StatusServiceUnavailable {
		t.Errorf("dial after Shutdown: %d, want 503", got)
	}

	srv.Close()
	http.DefaultClient.CloseIdleConnections()
	waitFor(t, "file descriptors released", func() bool { return openFDs(t) <= fdsBefore })
	goleak.VerifyNone(t, ignore)
}

// TestShutdownDeadlineWithPingsInFlight: at the deadline, sockets still
// open (peers that answer neither the close frame nor the pings) are all
// aborted at once; Shutdown returns promptly, with no keep-alive goroutine
// left, and nothing of the middleware logs afterwards, not even for the
// handlers that return after it.
func TestShutdownDeadlineWithPingsInFlight(t *testing.T) {
	const n = 50
	calls := newCalls()
	ws, srv, logs := relServer(t, chiws.Options{KeepAliveInterval: 20 * time.Millisecond, KeepAliveTimeout: time.Minute}, nil,
		func(r chi.Router) { r.Get("/ws", calls.wrap(echoErr)) })
	for range n {
		c, err := wstest.Handshake(hostOf(srv), "/ws", "") // never reads, never answers
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
	}
	waitFor(t, "pings outstanding", func() bool {
		return ws.Stats().PingsSent >= n && goroutineIn("chiws.(*heartbeat).beat")
	})
	const deadline = 200 * time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	defer cancel()
	start := time.Now()
	err := ws.Shutdown(ctx)
	took := time.Since(start)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Shutdown = %v, want DeadlineExceeded", err)
	}
	// A few milliseconds on an idle machine; the bound is loose for a
	// loaded one, and still far below coder/websocket's close handshake
	// timeouts (5 s to write the close frame, 5 s to wait for the answer).
	t.Logf("Shutdown returned %v after its deadline", took-deadline)
	if took > deadline+2*time.Second {
		t.Errorf("Shutdown took %v with a %v deadline", took, deadline)
	}
	// Shutdown waits for every keep-alive callback's work; a callback may
	// still be returning from run, past its WaitGroup's Done, so only its
	// exit is awaited (a callback left in Ping would stay for a minute).
	if goroutineIn("chiws.(*heartbeat).beat") {
		t.Error("a keep-alive callback still runs after Shutdown")
	}
	waitFor(t, "keep-alive callbacks to return", func() bool { return !goroutineIn("chiws.(*heartbeat).run") })
	if s := ws.Stats(); s.Active != 0 {
		t.Errorf("stats after Shutdown: %+v", s)
	}
	logged := logs.Len()
	calls.await(t, n) // the handlers return after Shutdown did
	if got := logs.Len(); got != logged {
		t.Errorf("%d log entries after Shutdown returned: %v", got-logged, logs.All()[logged:])
	}
	if got := logs.FilterMessage("websocket closed").Len(); got != n {
		t.Errorf("%d close logs, want %d", got, n)
	}
}

// TestShutdownPeerStalledMidFrame: a peer stalled in the middle of a frame
// holds the socket's reader, which coder/websocket's close handshake
// waits for (up to 5 s); Shutdown, even with a context that never ends,
// returns once CloseTimeout has passed, having aborted the socket. The
// 1001 went out first: the cause is ErrShuttingDown with 1001.
func TestShutdownPeerStalledMidFrame(t *testing.T) {
	const closeTimeout = 300 * time.Millisecond
	conns := make(chan *chiws.Conn, 1)
	calls := newCalls()
	ws, srv := server(t, chiws.Options{CloseTimeout: closeTimeout, KeepAliveInterval: -1}, func(r chi.Router) {
		r.Get("/ws", calls.accepted(func(c *chiws.Conn) error {
			conns <- c
			_, _, err := c.Read(c.Context())
			return err
		}))
	})
	c, err := wstest.Handshake(hostOf(srv), "/ws", "")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// A frame that announces 1000 bytes and carries 100: the server's read
	// waits for the rest, which never comes.
	wire := wstest.AppendFrame(nil, wstest.Frame{Fin: true, Opcode: wstest.OpBinary, Masked: true, Length: 1000, Payload: make([]byte, 100)})
	if _, err := c.Write(wire); err != nil {
		t.Fatal(err)
	}
	var conn *chiws.Conn
	select {
	case conn = <-conns:
	case <-testCtx(t).Done():
		t.Fatal("not accepted")
	}
	waitFor(t, "the handler reading the frame's payload", func() bool {
		return goroutineIn("websocket.(*Conn).readFramePayload")
	})

	start := time.Now()
	if err := ws.Shutdown(context.Background()); err != nil {
		t.Fatalf("Shutdown = %v", err)
	}
	if took := time.Since(start); took > closeTimeout+time.Second {
		t.Errorf("Shutdown took %v with CloseTimeout %v", took, closeTimeout)
	}
	select {
	case <-conn.Done():
	default:
		t.Fatal("Shutdown returned with the socket open")
	}
	cause := context.Cause(conn.Context())
	if !errors.Is(cause, chiws.ErrShuttingDown) || websocket.CloseStatus(cause) != websocket.StatusGoingAway {
		t.Errorf("cause %v, want ErrShuttingDown with 1001", cause)
	}
	if herr := calls.await(t, 1)[0]; herr == nil {
		t.Error("the handler's read succeeded")
	}
	f, err := c.AwaitClose(time.Now().Add(testTimeout), false)
	if err != nil || f.CloseCode() != int(websocket.StatusGoingAway) {
		t.Errorf("the client read %v (code %d), want the 1001", err, f.CloseCode())
	}
}
