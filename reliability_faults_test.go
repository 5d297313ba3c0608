package chiws_test

import (
	"context"
	"errors"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/chiws/chiws"
	"github.com/chiws/chiws/internal/wstest"
	"github.com/coder/websocket"
	"github.com/go-chi/chi/v5"
)

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

// TestSlowConsumer: a client that never reads. The handler's writes block
// once the kernel buffers are full; the caller's context bounds them, the
// handler returns, and nothing is buffered in user space meanwhile.
func TestSlowConsumer(t *testing.T) {
	const msgSize = 64 << 10
	tests := []struct {
		name          string
		keepAlive     time.Duration
		writeDeadline time.Duration // 0: no deadline, keep-alive must bound it
		wantTimeouts  uint64
	}{
		{"write deadline", -1, 300 * time.Millisecond, 0},
		{"no deadline, keep-alive", 100 * time.Millisecond, 0, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var written int64
			calls := newCalls()
			ws, srv, _ := relServer(t, chiws.Options{KeepAliveInterval: tt.keepAlive, KeepAliveTimeout: 200 * time.Millisecond}, nil,
				func(r chi.Router) {
					r.HandleFunc("/ws", calls.accepted(func(c *chiws.Conn) error {
						c.CloseRead(c.Context()) // reads pongs; the client sends nothing else
						msg := make([]byte, msgSize)
						for {
							ctx, cancel := c.Context(), context.CancelFunc(func() {})
							if tt.writeDeadline > 0 {
								ctx, cancel = context.WithTimeout(ctx, tt.writeDeadline)
							}
							err := c.Write(ctx, websocket.MessageBinary, msg)
							cancel()
							if err != nil {
								return err
							}
							written += msgSize
						}
					}))
				})
			var before runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&before)
			c, err := wstest.Handshake(hostOf(srv), "/ws", "")
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close() // never read

			herr := calls.await(t, 1)[0]
			var after runtime.MemStats
			runtime.ReadMemStats(&after)
			if herr == nil {
				t.Fatal("handler write never failed")
			}
			t.Logf("writes blocked after %d KiB (kernel buffers); heap %d -> %d KiB; error: %v",
				written>>10, before.HeapAlloc>>10, after.HeapAlloc>>10, herr)
			if tt.writeDeadline > 0 && !errors.Is(herr, context.DeadlineExceeded) {
				t.Errorf("handler error = %v, want the write deadline", herr)
			}
			// Loopback socket buffers hold a few MiB at most; anything near
			// this bound would mean user-space buffering.
			if written > 64<<20 {
				t.Errorf("%d bytes accepted by a peer that never reads", written)
			}
			waitActive(t, ws, 0)
			if st := ws.Stats(); st.KeepAliveTimeouts != tt.wantTimeouts || st.EarlyReturns != 0 {
				t.Errorf("stats: %+v", st)
			}
		})
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
			wantLog:   "websocket handler returned with the socket open; closing with 1011 (call Conn.Wait to hand the socket to another goroutine)",
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
