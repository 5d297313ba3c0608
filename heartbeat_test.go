package chiws_test

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/chiws/chiws"
	"github.com/chiws/chiws/internal/wstest"
	"github.com/coder/websocket"
	"github.com/go-chi/chi/v5"
)

// TestKeepAlivePings: an idle socket is pinged every interval, and a peer
// that answers is kept.
func TestKeepAlivePings(t *testing.T) {
	ws, srv := server(t, chiws.Options{KeepAliveInterval: 200 * time.Millisecond}, func(r chi.Router) { r.Get("/ws", echo) })
	pings := make(chan time.Time, 16)
	c := dial(t, wsURL(srv, "/ws"), &websocket.DialOptions{
		OnPingReceived: func(context.Context, []byte) bool {
			select {
			case pings <- time.Now():
			default:
			}
			return true // coder/websocket answers with the pong
		},
	})
	c.CloseRead(context.Background()) // reads, so that pings are answered
	start := time.Now()
	prev := start
	ctx := testCtx(t)
	for i := range 3 {
		select {
		case p := <-pings:
			// Never early: the first is an interval after the accept, the
			// next an interval after the previous answer.
			if gap := p.Sub(prev); gap < 190*time.Millisecond {
				t.Errorf("ping %d came %v after the previous one, want at least the interval", i+1, gap)
			}
			prev = p
		case <-ctx.Done():
			t.Fatalf("saw %d pings", i)
		}
	}
	if s := ws.Stats(); s.KeepAliveTimeouts != 0 || s.PingsSent < 3 {
		t.Errorf("stats %+v", s)
	}
}

// TestKeepAliveBusySocketsSendNoPings: a ping goes out only when the socket
// was quiet for an interval, in either direction. A socket that both
// reads and writes more often than the interval is never pinged; one that
// only reads (the server never writes) or only writes (the peer never
// sends) is, because proxies time out on silence from either side.
func TestKeepAliveBusySocketsSendNoPings(t *testing.T) {
	// Traffic every 20 ms against a 1 s interval: a socket counts as busy
	// unless the machine stalls the test for a whole second.
	const (
		interval = time.Second
		tick     = 20 * time.Millisecond
	)
	tests := []struct {
		name      string
		send      bool // the client sends a message every tick
		serverOut bool // the server writes a message every tick
		wantPings bool
	}{
		{name: "busy both ways", send: true, serverOut: true},
		{name: "server silent", send: true, wantPings: true},
		{name: "client silent", serverOut: true, wantPings: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pinged := make(chan struct{}, 1)
			ws, srv := server(t, chiws.Options{KeepAliveInterval: interval}, func(r chi.Router) {
				r.Get("/ws", func(w http.ResponseWriter, r *http.Request) {
					c, err := chiws.Accept(w, r, nil)
					if err != nil {
						return
					}
					ctx := c.Context()
					if tt.serverOut {
						go func() { // owned by the handler: ends when the socket closes
							tick := time.NewTicker(tick)
							defer tick.Stop()
							for {
								select {
								case <-ctx.Done():
									return
								case <-tick.C:
									if c.Write(ctx, websocket.MessageText, []byte("tick")) != nil {
										return
									}
								}
							}
						}()
					}
					for {
						if _, _, err := c.Read(ctx); err != nil {
							return
						}
					}
				})
			})
			c := dial(t, wsURL(srv, "/ws"), &websocket.DialOptions{
				OnPingReceived: func(context.Context, []byte) bool {
					select {
					case pinged <- struct{}{}:
					default:
					}
					return true
				},
			})
			readDone := make(chan struct{})
			go func() { // owned by the test: ends when c closes
				defer close(readDone)
				for {
					if _, _, err := c.Read(context.Background()); err != nil {
						return
					}
				}
			}()
			// Busy: four intervals of traffic, and no ping. Quiet in one
			// direction: traffic until the client sees a ping.
			ticker := time.NewTicker(tick)
			defer ticker.Stop()
			var end <-chan time.Time
			if !tt.wantPings {
				end = time.After(4 * interval)
			}
			ctx := testCtx(t)
		loop:
			for {
				select {
				case <-end:
					break loop
				case <-pinged:
					break loop
				case <-ctx.Done():
					t.Fatal("no ping while quiet in one direction")
				case <-ticker.C:
					if tt.send {
						if err := c.Write(ctx, websocket.MessageText, []byte("x")); err != nil {
							t.Fatal(err)
						}
					}
				}
			}
			got := ws.Stats().PingsSent > 0
			c.Close(websocket.StatusNormalClosure, "")
			<-readDone
			if got != tt.wantPings {
				t.Errorf("pings sent: %v, want %v", got, tt.wantPings)
			}
		})
	}
}

// TestKeepAliveNoGoroutineWhileIdle: between pings an idle socket has no
// keep-alive goroutine; one exists only while a ping is outstanding.
func TestKeepAliveNoGoroutineWhileIdle(t *testing.T) {
	const n = 20
	ws, srv := server(t, chiws.Options{KeepAliveInterval: 100 * time.Millisecond}, func(r chi.Router) { r.Get("/ws", echo) })
	for range n {
		dial(t, wsURL(srv, "/ws"), nil).CloseRead(context.Background())
	}
	waitFor(t, "every socket pinged twice", func() bool { return ws.Stats().PingsSent >= 2*n })
	before := runtime.NumGoroutine()
	waitFor(t, "no keep-alive goroutine", func() bool { return !goroutineIn("chiws.(*heartbeat).run") })
	if s := ws.Stats(); s.KeepAliveTimeouts != 0 || s.Active != n {
		t.Fatalf("stats %+v", s)
	}
	t.Logf("%d goroutines with %d sockets pinged every 100ms", before, n)
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
	// A client that never reads never answers pings: to the server it is
	// a peer that vanished.
	dial(t, wsURL(srv, "/ws"), nil)
	select {
	case d := <-returned:
		t.Logf("dead peer detected and handler returned after %v (interval 200ms + timeout 300ms)", d)
		if d < 500*time.Millisecond {
			t.Errorf("detected after %v, before interval + timeout", d)
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
	waitFor(t, "closed log", func() bool { return logs.FilterMessage("websocket closed").Len() == 1 })
	closed := logs.FilterMessage("websocket closed").All()[0].ContextMap()
	if closed["closedBy"] != "keepalive" {
		t.Errorf("closed log: %v", closed)
	}
	if d, _ := closed["duration"].(time.Duration); d < 500*time.Millisecond {
		t.Errorf("closed log duration %v, want at least interval + timeout", closed["duration"])
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

// TestVanishedPeerDetectedByKeepAlive puts a loopback proxy between clients
// and server, lets pings flow, then makes the proxy go silent (no FIN, no
// reset: a peer that lost its network). Keep-alive must notice within
// KeepAliveInterval + KeepAliveTimeout and the handlers must return.
func TestVanishedPeerDetectedByKeepAlive(t *testing.T) {
	const (
		interval = 200 * time.Millisecond
		timeout  = 300 * time.Millisecond
		n        = 20
		margin   = 5 * time.Second // generous: a loaded 2-core machine
	)
	calls := newCalls()
	ws, srv, logs := relServer(t, chiws.Options{KeepAliveInterval: interval, KeepAliveTimeout: timeout}, nil,
		func(r chi.Router) { r.HandleFunc("/ws", calls.wrap(echoErr)) })
	proxy, err := wstest.NewProxy(hostOf(srv))
	if err != nil {
		t.Fatal(err)
	}
	var readers sync.WaitGroup
	t.Cleanup(func() {
		proxy.Close() // ends the clients' reads
		readers.Wait()
	})
	ctx := testCtx(t)
	for i := 0; i < n; i++ {
		c := dial(t, "ws://"+proxy.Addr()+"/ws", nil)
		if err := c.Write(ctx, websocket.MessageText, []byte("hi")); err != nil {
			t.Fatal(err)
		}
		if _, _, err := c.Read(ctx); err != nil {
			t.Fatal(err)
		}
		readers.Add(1)
		go func() { // the client keeps reading, so it answers pings
			defer readers.Done()
			for {
				if _, _, err := c.Read(context.Background()); err != nil {
					return
				}
			}
		}()
	}
	waitFor(t, "pings answered through the proxy", func() bool { return ws.Stats().PingsSent >= 2*n })
	if st := ws.Stats(); st.KeepAliveTimeouts != 0 {
		t.Fatalf("live peers timed out: %+v", st)
	}

	proxy.Stall()
	start := time.Now()
	var first, last time.Duration
	for i, err := range calls.await(t, n) {
		d := time.Since(start)
		if i == 0 {
			first = d
		}
		last = d
		if err == nil {
			t.Error("handler returned without a read error")
		}
	}
	t.Logf("%d vanished peers detected %v to %v after the proxy went silent (interval %v + timeout %v = %v)",
		n, first.Round(time.Millisecond), last.Round(time.Millisecond), interval, timeout, interval+timeout)
	if bound := interval + timeout + margin; last > bound {
		t.Errorf("detection took %v, want under %v", last, bound)
	}
	waitActive(t, ws, 0)
	if st := ws.Stats(); st.KeepAliveTimeouts != n {
		t.Errorf("KeepAliveTimeouts = %d, want %d", st.KeepAliveTimeouts, n)
	}
	if got := logs.FilterMessage("websocket keep-alive timeout; aborting").Len(); got != n {
		t.Errorf("%d keep-alive timeout logs, want %d", got, n)
	}
}

// TestSlowReaderNotKilledByKeepAlive: a large message to a peer that reads
// slowly holds coder/websocket's write lock longer than the five seconds it
// gives a ping. The peer is alive (the write progresses), so the keep-alive
// must not abort it, neither during the write nor after it, once the peer
// is idle: the ping that could not be written must not be taken for one
// the peer ignored when its deadline comes.
func TestSlowReaderNotKilledByKeepAlive(t *testing.T) {
	if testing.Short() {
		t.Skip("takes about 9 s")
	}
	const size = 20 << 20
	const timeout = 8 * time.Second // past the write (about 6.5 s)
	werr := make(chan error, 1)
	// Small socket buffers on both sides, so that the server's write lasts
	// as long as the client's reading (about 6.5 s), past the five seconds
	// a ping waits for the write lock.
	smallBuffers := func(srv *http.Server) {
		srv.ConnState = func(c net.Conn, st http.ConnState) {
			if tc, ok := c.(*net.TCPConn); ok && st == http.StateNew {
				_ = tc.SetWriteBuffer(32 << 10)
			}
		}
	}
	ws, srv, logs := relServer(t, chiws.Options{KeepAliveInterval: 300 * time.Millisecond, KeepAliveTimeout: timeout}, smallBuffers,
		func(r chi.Router) {
			r.Get("/big", func(w http.ResponseWriter, r *http.Request) {
				c, err := chiws.Accept(w, r, nil)
				if err != nil {
					return
				}
				ctx := c.CloseRead(c.Context())
				werr <- c.Write(ctx, websocket.MessageBinary, make([]byte, size))
				<-ctx.Done() // idle until the client closes
			})
		})
	ctx := testCtx(t)
	smallDial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
		if tc, ok := c.(*net.TCPConn); ok {
			_ = tc.SetReadBuffer(32 << 10)
		}
		return c, err
	}
	cc := dial(t, wsURL(srv, "/big"), &websocket.DialOptions{HTTPClient: &http.Client{Transport: &http.Transport{DialContext: smallDial}}})
	cc.SetReadLimit(-1)
	_, rd, err := cc.Reader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64<<10)
	total := 0
	start := time.Now()
	for total < size {
		n, err := rd.Read(buf)
		total += n
		if err != nil && !errors.Is(err, io.EOF) {
			t.Fatalf("read ended after %v and %d bytes: %v", time.Since(start), total, err)
		}
		if err != nil {
			break
		}
		// The slow reader under test: about 3 MB/s.
		time.Sleep(20 * time.Millisecond)
	}
	if err := <-werr; err != nil || total != size {
		t.Fatalf("server write: %v; client got %d of %d bytes", err, total, size)
	}
	t.Logf("%d MiB read in %v", size>>20, time.Since(start))
	// Now idle, answering pings (the client reads), past the deadline of
	// the ping that waited behind the write.
	readErr := make(chan error, 1)
	go func() { // ends when cc closes
		_, _, err := cc.Read(ctx)
		readErr <- err
	}()
	pings := ws.Stats().PingsSent
	waitFor(t, "pings answered past the first ping's deadline", func() bool {
		s := ws.Stats()
		return s.KeepAliveTimeouts > 0 || time.Since(start) > timeout+time.Second && s.PingsSent >= pings+2
	})
	if s := ws.Stats(); s.KeepAliveTimeouts != 0 {
		t.Fatalf("a slow but alive reader was aborted: %+v", s)
	}
	cc.Close(websocket.StatusNormalClosure, "")
	// Its own close: the close code, or, when a server ping arrived as the
	// client closed, the pong's write failing on the connection the client
	// closed itself (not an abort by the server: EOF or a reset).
	if err := <-readErr; closeStatus(err) != websocket.StatusNormalClosure && !errors.Is(err, net.ErrClosed) {
		t.Fatalf("client read ended with %v, want its own close", err)
	}
	// The ping waited behind the write and was deferred: the path under
	// test was taken.
	if n := logs.FilterMessageSnippet("ping deferred").Len(); n == 0 {
		t.Fatal("no ping was deferred behind the write: the test did not exercise the slow-write path")
	}
}

// TestKeepAliveDataIsSignOfLife: a peer that keeps sending data is alive
// even if it never answers pings (its pongs may be queued behind its own
// large message); it is declared dead once it stops.
func TestKeepAliveDataIsSignOfLife(t *testing.T) {
	ws, srv, logs := relServer(t, chiws.Options{KeepAliveInterval: 50 * time.Millisecond, KeepAliveTimeout: 100 * time.Millisecond}, nil,
		func(r chi.Router) { r.Get("/ws", reader(nil)) })
	c, err := wstest.Handshake(hostOf(srv), "/ws", "")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// Send a frame whenever a ping arrives, and never pong: 20 pings in a
	// row prove the data kept the socket open through 20 deadlines.
	for i := 0; i < 20; i++ {
		_ = c.SetReadDeadline(time.Now().Add(testTimeout))
		f, err := c.ReadFrame()
		if err != nil {
			t.Fatalf("after %d pings: %v (stats %+v)", i, err, ws.Stats())
		}
		if f.Opcode != wstest.OpPing {
			t.Fatalf("got opcode %#x, want a ping", f.Opcode)
		}
		if err := c.WriteFrame(wstest.Frame{Fin: true, Opcode: wstest.OpText, Masked: true, Payload: []byte("alive")}); err != nil {
			t.Fatal(err)
		}
	}
	if s := ws.Stats(); s.KeepAliveTimeouts != 0 {
		t.Fatalf("aborted while sending data: %+v", s)
	}
	// Now silent: the next ping goes unanswered and the socket is aborted.
	if err := c.AwaitEOF(time.Now().Add(testTimeout)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "keep-alive timeout", func() bool { return ws.Stats().KeepAliveTimeouts == 1 })
	waitFor(t, "timeout logged", func() bool { return logs.FilterMessage("websocket keep-alive timeout; aborting").Len() == 1 })
}

// TestKeepAliveEndsSocketAfterCloseFrame: after coder/websocket sent 1009
// (a message over ReadLimit) it waits for the peer's close frame. A peer
// that then goes silent is still ended by the keep-alive, although the
// close was recorded first, so that Wait returns.
func TestKeepAliveEndsSocketAfterCloseFrame(t *testing.T) {
	waited := make(chan error, 1)
	ws, srv, _ := relServer(t, chiws.Options{ReadLimit: 16, KeepAliveInterval: 100 * time.Millisecond, KeepAliveTimeout: 100 * time.Millisecond}, nil,
		func(r chi.Router) {
			r.Get("/ws", func(w http.ResponseWriter, r *http.Request) {
				c, err := chiws.Accept(w, r, nil)
				if err != nil {
					return
				}
				read := make(chan struct{})
				go func() { // a reader that stops at the first error
					defer close(read)
					for {
						if _, _, err := c.Read(c.Context()); err != nil {
							return
						}
					}
				}()
				waited <- c.Wait(testCtx(t))
				<-read
			})
		})
	c, err := wstest.Handshake(hostOf(srv), "/ws", "")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// Over ReadLimit; then silent: no close frame back, no pong.
	if err := c.WriteFrame(wstest.Frame{Fin: true, Opcode: wstest.OpText, Masked: true, Payload: make([]byte, 100)}); err != nil {
		t.Fatal(err)
	}
	if err := <-waited; err != nil {
		t.Fatalf("Wait: %v (stats %+v): the socket stayed open", err, ws.Stats())
	}
	waitFor(t, "no active socket", func() bool { return ws.Stats().Active == 0 })
}

// TestReadingHandlerKeepsLivePeers is the control for "never reads": a
// write-only handler that calls CloseRead keeps live peers through many
// pings without a single timeout.
func TestReadingHandlerKeepsLivePeers(t *testing.T) {
	const n = 10
	calls := newCalls()
	ws, srv, _ := relServer(t, chiws.Options{
		KeepAliveInterval: 50 * time.Millisecond,
		KeepAliveTimeout:  5 * time.Second,
	}, nil, func(r chi.Router) {
		r.HandleFunc("/ws", calls.accepted(func(c *chiws.Conn) error {
			ctx := c.CloseRead(c.Context())
			<-ctx.Done()
			return c.Wait(context.Background())
		}))
	})
	var readers sync.WaitGroup
	conns := make([]*websocket.Conn, n)
	for i := range conns {
		c := dial(t, wsURL(srv, "/ws"), nil)
		conns[i] = c
		readers.Add(1)
		go func() {
			defer readers.Done()
			_, _, _ = c.Read(context.Background())
		}()
	}
	waitFor(t, "several pings per socket", func() bool { return ws.Stats().PingsSent >= 5*n })
	if st := ws.Stats(); st.KeepAliveTimeouts != 0 || st.Active != n {
		t.Fatalf("stats: %+v", st)
	}
	for _, c := range conns {
		c.Close(websocket.StatusNormalClosure, "")
	}
	readers.Wait()
	calls.await(t, n)
	waitActive(t, ws, 0)
}

// TestStalledFragmentedMessageAnsweringPings: a peer that answers pings is
// alive, so keep-alive keeps it open however long its message takes. The
// bound is then the handler's read context (and ReadLimit if it keeps
// sending): here a 300 ms read deadline ends it with the deadline error.
func TestStalledFragmentedMessageAnsweringPings(t *testing.T) {
	calls := newCalls()
	ws, srv, _ := relServer(t, chiws.Options{
		KeepAliveInterval: 50 * time.Millisecond,
		KeepAliveTimeout:  5 * time.Second,
	}, nil, func(r chi.Router) {
		r.HandleFunc("/ws", calls.accepted(func(c *chiws.Conn) error {
			ctx, cancel := context.WithTimeout(c.Context(), 300*time.Millisecond)
			defer cancel()
			_, _, err := c.Read(ctx)
			return err
		}))
	})
	c, err := wstest.Handshake(hostOf(srv), "/ws", "")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.WriteFrame(wstest.Frame{Opcode: wstest.OpText, Masked: true, Payload: []byte("never finished")}); err != nil {
		t.Fatal(err)
	}
	go c.AwaitClose(time.Now().Add(testTimeout), true) // answers pings
	if herr := calls.await(t, 1)[0]; !errors.Is(herr, context.DeadlineExceeded) {
		t.Errorf("handler error = %v, want the read deadline", herr)
	}
	waitActive(t, ws, 0)
	if st := ws.Stats(); st.KeepAliveTimeouts != 0 {
		t.Errorf("a peer answering pings was timed out: %+v", st)
	}
}
