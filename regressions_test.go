package chiws_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/chiws/chiws"
	"github.com/chiws/chiws/internal/wstest"
	"github.com/coder/websocket"
	"github.com/coder/websocket/wsjson"
	"github.com/go-chi/chi/v5"
)

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
	if err := <-readErr; closeStatus(err) != websocket.StatusNormalClosure {
		t.Fatalf("client read ended with %v, want its own close", err)
	}
	// The ping waited behind the write and was deferred: the path under
	// test was taken.
	if n := logs.FilterMessageSnippet("ping deferred").Len(); n == 0 {
		t.Fatal("no ping was deferred behind the write: the test did not exercise the slow-write path")
	}
}

// TestWsjsonReadLimitIsNotEarlyReturn: a handler reading through the
// embedded *websocket.Conn (wsjson) returns after coder/websocket closed
// with 1009; that is not an early return.
func TestWsjsonReadLimitIsNotEarlyReturn(t *testing.T) {
	ws, srv, logs := relServer(t, chiws.Options{ReadLimit: 16}, nil, func(r chi.Router) {
		r.Get("/json", func(w http.ResponseWriter, r *http.Request) {
			c, err := chiws.Accept(w, r, nil)
			if err != nil {
				return
			}
			var v any
			for wsjson.Read(c.Context(), c.Conn, &v) == nil {
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

// bypass is a ResponseWriter wrapper whose Hijack goes straight to the
// server's writer, around the middleware's.
type bypass struct{ http.ResponseWriter }

func bypassWriter(w http.ResponseWriter) http.ResponseWriter { return bypass{w} }

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

func TestHijackBypassStillSends101(t *testing.T) {
	_, srv := server(t, chiws.Options{}, func(r chi.Router) {
		r.Get("/ws", func(w http.ResponseWriter, r *http.Request) {
			c, err := chiws.Accept(bypass{w}, r, nil)
			if err != nil {
				return
			}
			defer c.CloseNow()
			c.Read(c.Context())
		})
	})
	dial(t, wsURL(srv, "/ws"), nil).Close(websocket.StatusNormalClosure, "")
}

// Test101HasNoBodyHeaders: like net/http, the 101 carries no
// Content-Length or Transfer-Encoding even when a handler set them.
func Test101HasNoBodyHeaders(t *testing.T) {
	_, srv := server(t, chiws.Options{}, func(r chi.Router) {
		r.With(func(next http.Handler) http.Handler {
			return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Length", "0")
				w.Header().Set("Transfer-Encoding", "chunked")
				w.Header().Set("X-Kept", "yes")
				next.ServeHTTP(w, r)
			})
		}).Get("/ws", echo)
	})
	conn, err := net.Dial("tcp", srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	io.WriteString(conn, "GET /ws HTTP/1.1\r\nHost: "+srv.Listener.Addr().String()+"\r\nUpgrade: websocket\r\n"+
		"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: "+validKey+"\r\n\r\n")
	conn.SetReadDeadline(time.Now().Add(testTimeout))
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols || resp.Header.Get("X-Kept") != "yes" {
		t.Fatalf("status %d, headers %v", resp.StatusCode, resp.Header)
	}
	for _, h := range []string{"Content-Length", "Transfer-Encoding"} {
		if _, ok := resp.Header[h]; ok {
			t.Errorf("101 carries %s", h)
		}
	}
}

// TestConnContextCause: the cause of Conn.Context is the socket's end, not
// the request's.
func TestConnContextCause(t *testing.T) {
	got := make(chan error, 1)
	_, srv := server(t, chiws.Options{}, func(r chi.Router) {
		r.Get("/ws", func(w http.ResponseWriter, r *http.Request) {
			// The request's context ends with a cause of its own, as
			// chi's Timeout middleware ends it while the socket lives.
			rctx, cancel := context.WithCancelCause(r.Context())
			defer cancel(nil)
			c, err := chiws.Accept(w, r.WithContext(rctx), nil)
			if err != nil {
				return
			}
			cancel(errors.New("the request's cause"))
			ctx := c.Context()
			if err := ctx.Err(); err != nil {
				got <- fmt.Errorf("Conn.Context ended with the request: %w", err)
				return
			}
			c.CloseNow()
			<-ctx.Done()
			got <- context.Cause(ctx)
		})
	})
	dial(t, wsURL(srv, "/ws"), nil)
	if err := <-got; err != context.Canceled {
		t.Fatalf("Cause = %v, want context.Canceled", err)
	}
}

// TestConnContextNoWatcherGoroutine: coder/websocket calls
// context.AfterFunc on every Read and Write. On a context type the context
// package does not know, that starts a goroutine per call; Conn.Context
// implements AfterFunc so that it does not.
func TestConnContextNoWatcherGoroutine(t *testing.T) {
	const n = 20
	ws, srv := server(t, chiws.Options{}, func(r chi.Router) { r.Get("/ws", echo) })
	for range n {
		dial(t, wsURL(srv, "/ws"), nil)
	}
	waitFor(t, "handlers reading", func() bool {
		return ws.Stats().Active == n && strings.Count(allStacks(), "(*Conn).Read(") >= n
	})
	if got := strings.Count(allStacks(), "propagateCancel"); got != 0 {
		t.Fatalf("%d goroutines watch a context for %d reading sockets", got, n)
	}
}

func allStacks() string {
	buf := make([]byte, 1<<20)
	return string(buf[:runtime.Stack(buf, true)])
}

// TestKeepAliveWithHijackBypass: when a wrapper hijacks around the
// middleware's writer, chiws sees no reads or writes; the keep-alive then
// waits for each pong, and a peer that answers is never aborted.
func TestKeepAliveWithHijackBypass(t *testing.T) {
	for _, tc := range []struct {
		name    string
		timeout time.Duration
	}{{"deadline", 200 * time.Millisecond}, {"unsolicited", -1}} {
		t.Run(tc.name, func(t *testing.T) {
			ws, srv, _ := relServer(t, chiws.Options{KeepAliveInterval: 50 * time.Millisecond, KeepAliveTimeout: tc.timeout}, nil,
				func(r chi.Router) { r.Get("/ws", reader(bypassWriter)) })
			c := dial(t, wsURL(srv, "/ws"), nil)
			readErr := make(chan error, 1)
			go func() { // answers pings; ends when c closes
				_, _, err := c.Read(context.Background())
				readErr <- err
			}()
			waitFor(t, "10 pings", func() bool { s := ws.Stats(); return s.PingsSent >= 10 || s.KeepAliveTimeouts > 0 })
			if s := ws.Stats(); s.KeepAliveTimeouts != 0 {
				t.Fatalf("a peer answering pings was aborted: %+v", s)
			}
			c.Close(websocket.StatusNormalClosure, "")
			<-readErr
		})
	}
}

// TestUnsolicitedPingsWithHijackBypassAndSilentPeer: without netConn and
// without a deadline, a ping to a peer that never answers must not block
// the pings that follow.
func TestUnsolicitedPingsWithHijackBypassAndSilentPeer(t *testing.T) {
	ws, srv, _ := relServer(t, chiws.Options{KeepAliveInterval: 50 * time.Millisecond, KeepAliveTimeout: -1}, nil,
		func(r chi.Router) { r.Get("/ws", reader(bypassWriter)) })
	c, err := wstest.Handshake(hostOf(srv), "/ws", "") // never reads: no pong
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	waitFor(t, "3 pings", func() bool { return ws.Stats().PingsSent >= 3 })
}

// TestKeepAlivePingDoesNotWaitForPong: the keep-alive's goroutine ends once
// its ping is written; no goroutine waits for the pong. The client here
// never reads, so the pong never comes, and the timeout (a minute) is far
// away: a goroutine waiting in Ping would still be there.
func TestKeepAlivePingDoesNotWaitForPong(t *testing.T) {
	ws, srv, _ := relServer(t, chiws.Options{KeepAliveInterval: 50 * time.Millisecond, KeepAliveTimeout: time.Minute}, nil,
		func(r chi.Router) { r.Get("/ws", echo) })
	c, err := wstest.Handshake(hostOf(srv), "/ws", "")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	waitFor(t, "a ping written", func() bool { return ws.Stats().PingsSent >= 1 })
	waitFor(t, "no keep-alive goroutine", func() bool { return !goroutineIn("chiws.(*socket).keepAlive") })
	// Still one ping: the next waits for a sign of life or the deadline.
	if n := ws.Stats().PingsSent; n != 1 {
		t.Errorf("PingsSent = %d while the first ping is unanswered, want 1", n)
	}
}

// goroutineIn reports whether some goroutine's stack has a frame of fn.
func goroutineIn(fn string) bool {
	buf := make([]byte, 1<<20)
	return strings.Contains(string(buf[:runtime.Stack(buf, true)]), fn+"(")
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
