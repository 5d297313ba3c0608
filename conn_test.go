package chiws_test

import (
	"bytes"
	"context"
	"encoding/json"
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
	"github.com/go-chi/chi/v5"
)

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

// TestConnContextCause: Conn.Context carries the request's values, not its
// cancellation; it ends when the socket closes, and context.Cause says
// why, with the close code.
func TestConnContextCause(t *testing.T) {
	type key struct{}
	tests := []struct {
		name     string
		opts     chiws.Options
		handler  func(c *chiws.Conn)     // after the request's own context ended
		client   func(c *websocket.Conn) // what the client does
		wantBy   error
		wantCode websocket.StatusCode
	}{
		{
			name:     "peer closes",
			handler:  func(c *chiws.Conn) { c.Read(c.Context()) },
			client:   func(c *websocket.Conn) { c.Close(4000, "bye") },
			wantBy:   chiws.ErrClosedByPeer,
			wantCode: 4000,
		},
		{
			name:     "server closes",
			handler:  func(c *chiws.Conn) { c.Close(4001, "done") },
			client:   func(c *websocket.Conn) { c.Read(context.Background()) },
			wantBy:   chiws.ErrClosedByServer,
			wantCode: 4001,
		},
		{
			name:     "handler returns",
			handler:  func(c *chiws.Conn) {},
			client:   func(c *websocket.Conn) { c.Read(context.Background()) },
			wantBy:   chiws.ErrHandlerReturned,
			wantCode: websocket.StatusInternalError,
		},
		{
			name:     "handler panics",
			handler:  func(c *chiws.Conn) { panic("boom") },
			client:   func(c *websocket.Conn) { c.Read(context.Background()) },
			wantBy:   chiws.ErrHandlerPanicked,
			wantCode: websocket.StatusInternalError,
		},
		{
			name:     "connection lost",
			handler:  func(c *chiws.Conn) { c.Read(c.Context()) },
			client:   func(c *websocket.Conn) { c.CloseNow() },
			wantBy:   chiws.ErrConnectionLost,
			wantCode: -1,
		},
		{
			name:     "keep-alive timeout",
			opts:     chiws.Options{KeepAliveInterval: 50 * time.Millisecond, KeepAliveTimeout: 50 * time.Millisecond},
			handler:  func(c *chiws.Conn) { c.Read(c.Context()) },
			client:   func(c *websocket.Conn) {}, // never reads: never answers
			wantBy:   chiws.ErrKeepAliveTimeout,
			wantCode: -1,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := make(chan context.Context, 1)
			_, srv := server(t, tt.opts, func(r chi.Router) {
				r.Get("/ws", func(w http.ResponseWriter, r *http.Request) {
					// The request's context ends with a cause of its own, as
					// chi's Timeout middleware ends it while the socket lives.
					rctx, cancel := context.WithCancelCause(context.WithValue(r.Context(), key{}, "v"))
					defer cancel(nil)
					c, err := chiws.Accept(w, r.WithContext(rctx), nil)
					if err != nil {
						return
					}
					cancel(errors.New("the request's cause"))
					got <- c.Context()
					tt.handler(c)
				})
			})
			c := dial(t, wsURL(srv, "/ws"), nil)
			var ctx context.Context
			select {
			case ctx = <-got:
			case <-testCtx(t).Done():
				t.Fatal("not accepted")
			}
			if ctx.Value(key{}) != "v" {
				t.Error("Conn.Context lost the request's values")
			}
			if err := ctx.Err(); err != nil {
				t.Fatalf("Conn.Context ended with the request: %v", err)
			}
			tt.client(c)
			select {
			case <-ctx.Done():
			case <-testCtx(t).Done():
				t.Fatal("Conn.Context not cancelled")
			}
			cause := context.Cause(ctx)
			if !errors.Is(cause, tt.wantBy) {
				t.Errorf("Cause = %v, want %v", cause, tt.wantBy)
			}
			if got := websocket.CloseStatus(cause); got != tt.wantCode {
				t.Errorf("CloseStatus(Cause) = %d, want %d", got, tt.wantCode)
			}
			if !errors.Is(ctx.Err(), context.Canceled) {
				t.Errorf("Err = %v, want context.Canceled", ctx.Err())
			}
		})
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

// TestBadFrames writes invalid frames after a real handshake and checks the
// server closes with the RFC 6455 code, closes the TCP connection, returns
// from the handler and releases the socket.
func TestBadFrames(t *testing.T) {
	const readLimit = 1024
	text := func(p string) wstest.Frame {
		return wstest.Frame{Fin: true, Opcode: wstest.OpText, Masked: true, Payload: []byte(p)}
	}
	closeFrame := func(p []byte) wstest.Frame {
		return wstest.Frame{Fin: true, Opcode: wstest.OpClose, Masked: true, Payload: p}
	}
	// A fragmented message that never ends: continuation frames keep coming.
	var endless []wstest.Frame
	endless = append(endless, wstest.Frame{Opcode: wstest.OpText, Masked: true, Payload: bytes.Repeat([]byte("a"), 100)})
	for i := 0; i < 2*readLimit/100; i++ {
		endless = append(endless, wstest.Frame{Opcode: wstest.OpContinuation, Masked: true, Payload: bytes.Repeat([]byte("a"), 100)})
	}
	tests := []struct {
		name     string
		give     []wstest.Frame
		wantCode int
	}{
		{"unmasked text frame", []wstest.Frame{{Fin: true, Opcode: wstest.OpText, Payload: []byte("hi")}}, 1002},
		{"invalid UTF-8 text", []wstest.Frame{text("ok \xff\xfe")}, 1007},
		{"truncated UTF-8 text", []wstest.Frame{text("\xe2\x82")}, 1007},
		{"invalid UTF-8 across fragments", []wstest.Frame{
			{Opcode: wstest.OpText, Masked: true, Payload: []byte("ab\xc3")},
			{Fin: true, Opcode: wstest.OpContinuation, Masked: true, Payload: []byte("(")},
		}, 1007},
		{"message over ReadLimit", []wstest.Frame{{Fin: true, Opcode: wstest.OpBinary, Masked: true, Payload: make([]byte, 2*readLimit)}}, 1009},
		{"message over ReadLimit announced", []wstest.Frame{{Fin: true, Opcode: wstest.OpBinary, Masked: true, Length: 1 << 40, Payload: make([]byte, 2*readLimit)}}, 1009},
		{"fragmented message that never ends", endless, 1009},
		{"close code 999", []wstest.Frame{closeFrame(wstest.ClosePayload(999, ""))}, 1002},
		{"close code 1005", []wstest.Frame{closeFrame(wstest.ClosePayload(1005, ""))}, 1002},
		{"close code 1006", []wstest.Frame{closeFrame(wstest.ClosePayload(1006, ""))}, 1002},
		{"close code 5000", []wstest.Frame{closeFrame(wstest.ClosePayload(5000, ""))}, 1002},
		{"close payload of 1 byte", []wstest.Frame{closeFrame([]byte{3})}, 1002},
		{"reserved opcode", []wstest.Frame{{Fin: true, Opcode: 0x3, Masked: true}}, 1002},
		{"RSV1 without compression", []wstest.Frame{{Fin: true, RSV: 4, Opcode: wstest.OpText, Masked: true, Payload: []byte("x")}}, 1002},
		{"fragmented ping", []wstest.Frame{{Opcode: wstest.OpPing, Masked: true}}, 1002},
		{"ping over 125 bytes", []wstest.Frame{{Fin: true, Opcode: wstest.OpPing, Masked: true, Payload: make([]byte, 126)}}, 1002},
		{"continuation without a start", []wstest.Frame{{Fin: true, Opcode: wstest.OpContinuation, Masked: true, Payload: []byte("x")}}, 1002},
		{"data after close", []wstest.Frame{closeFrame(wstest.ClosePayload(1000, "bye")), text("after close")}, 1000},
		// Control: a well-formed exchange is echoed, then closed normally.
		{"control: valid text then close", []wstest.Frame{text("héllo"), closeFrame(wstest.ClosePayload(1000, ""))}, 1000},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			calls := newCalls()
			ws, srv, _ := relServer(t, chiws.Options{ReadLimit: readLimit, CloseTimeout: time.Second}, nil, func(r chi.Router) {
				r.HandleFunc("/ws", calls.wrap(echoErr))
			})
			c, err := wstest.Handshake(hostOf(srv), "/ws", "")
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			var wire []byte
			for _, f := range tt.give {
				wire = wstest.AppendFrame(wire, f)
			}
			// The server may hang up before it has read everything.
			go c.Write(wire)

			deadline := time.Now().Add(testTimeout)
			f, err := c.AwaitClose(deadline, false)
			if err != nil {
				t.Fatalf("no close frame: %v", err)
			}
			if got := f.CloseCode(); got != tt.wantCode {
				t.Errorf("close code = %d (%q), want %d", got, f.Payload, tt.wantCode)
			}
			if err := c.AwaitEOF(deadline); err != nil {
				t.Errorf("server did not close the connection: %v", err)
			}
			herr := calls.await(t, 1)[0]
			if herr == nil {
				t.Error("handler returned without a read error")
			}
			waitActive(t, ws, 0)
			if st := ws.Stats(); st.EarlyReturns != 0 || st.Panics != 0 {
				t.Errorf("stats: %+v", st)
			}
		})
	}
}

// TestStalledFragmentedMessage: a client that starts a message and then goes
// silent (it does not even answer pings) holds the handler in Read. What
// bounds it is the keep-alive: the socket is aborted KeepAliveInterval +
// KeepAliveTimeout after the last pong.
func TestStalledFragmentedMessage(t *testing.T) {
	calls := newCalls()
	ws, srv, logs := relServer(t, chiws.Options{
		KeepAliveInterval: 100 * time.Millisecond,
		KeepAliveTimeout:  200 * time.Millisecond,
	}, nil, func(r chi.Router) {
		r.HandleFunc("/ws", calls.wrap(echoErr))
	})
	c, err := wstest.Handshake(hostOf(srv), "/ws", "")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.WriteFrame(wstest.Frame{Opcode: wstest.OpText, Masked: true, Payload: []byte("never finished")}); err != nil {
		t.Fatal(err)
	}
	// The client reads (and drops) pings but never answers.
	if _, err := c.AwaitClose(time.Now().Add(testTimeout), false); !errors.Is(err, wstest.ErrNoCloseFrame) {
		t.Fatalf("want the connection aborted without a close frame, got %v", err)
	}
	if herr := calls.await(t, 1)[0]; herr == nil {
		t.Error("handler returned without a read error")
	}
	waitActive(t, ws, 0)
	if st := ws.Stats(); st.KeepAliveTimeouts != 1 {
		t.Errorf("KeepAliveTimeouts = %d, want 1", st.KeepAliveTimeouts)
	}
	if n := logs.FilterMessage("websocket keep-alive timeout; aborting").Len(); n != 1 {
		t.Errorf("%d keep-alive timeout logs, want 1", n)
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

// TestCloseCodeReachesSendingPeer: when the server fails a socket (here
// 1009, a 100 KB message in 100 frames against the 32 KiB limit) while the
// client is still sending, the server keeps reading and discarding what
// comes, for a bounded time, instead of closing at once: a close with
// unread data makes the kernel send a reset, and a reset destroys the
// close frame for a client whose next write fails (Node's ws reports
// 1006). The client here reads only once the server is done with the
// connection, so that the reset, if any, has arrived.
func TestCloseCodeReachesSendingPeer(t *testing.T) {
	calls := newCalls()
	ws, srv, logs := relServer(t, chiws.Options{KeepAliveInterval: -1, CloseTimeout: time.Second}, nil,
		func(r chi.Router) { r.Get("/ws", calls.wrap(echoErr)) })
	var wire []byte
	const frames = 100 // more than the server's buffers hold past the limit
	for i := range frames {
		f := wstest.Frame{Opcode: wstest.OpContinuation, Masked: true, Payload: make([]byte, 1000)}
		if i == 0 {
			f.Opcode = wstest.OpBinary
		}
		f.Fin = i == frames-1
		wire = wstest.AppendFrame(wire, f)
	}
	const runs = 3
	for i := range runs {
		c, err := wstest.Handshake(hostOf(srv), "/ws", "")
		if err != nil {
			t.Fatal(err)
		}
		_ = c.SetWriteDeadline(time.Now().Add(testTimeout))
		_, _ = c.Write(wire) // may fail once the server has closed
		if err := calls.await(t, 1)[0]; !errors.Is(err, websocket.ErrMessageTooBig) {
			t.Fatalf("run %d: handler returned %v", i, err)
		}
		waitActive(t, ws, 0) // the middleware is done with the connection
		_ = c.SetReadDeadline(time.Now().Add(testTimeout))
		f, err := c.ReadFrame()
		if err != nil || f.Opcode != wstest.OpClose {
			t.Fatalf("run %d: read %v %v, want the close frame", i, f, err)
		}
		if got := f.CloseCode(); got != 1009 {
			t.Fatalf("run %d: close code %d, want 1009", i, got)
		}
		// The server's close was clean (FIN), not a reset: a client
		// still sending would otherwise have lost the close frame to a
		// failed write (Node's ws reports 1006 then).
		if _, err := io.Copy(io.Discard, c.R); err != nil {
			t.Fatalf("run %d: after the close frame: %v, want EOF", i, err)
		}
		c.Close()
	}
	waitFor(t, "close logs", func() bool { return logs.FilterMessage("websocket closed").Len() == runs })
	for _, e := range logs.FilterMessage("websocket closed").All() {
		if f := e.ContextMap(); f["closeCode"] != int64(1009) || f["closedBy"] != "server" {
			t.Fatalf("close log %v", f)
		}
	}
}

// TestResetIsConnectionLost: a client that resets its TCP connection (a
// killed tab, a load balancer) lost the connection; it is not a protocol
// error, and no close code was sent.
func TestResetIsConnectionLost(t *testing.T) {
	calls := newCalls()
	_, srv, logs := relServer(t, chiws.Options{}, nil, func(r chi.Router) { r.Get("/ws", calls.wrap(echoErr)) })
	c, err := wstest.Handshake(hostOf(srv), "/ws", "")
	if err != nil {
		t.Fatal(err)
	}
	// Send a message and wait for its echo: the handler is reading.
	if err := c.WriteFrame(wstest.Frame{Fin: true, Opcode: wstest.OpText, Masked: true, Payload: []byte("hi")}); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(testTimeout))
	if _, err := c.ReadFrame(); err != nil {
		t.Fatal(err)
	}
	_ = c.Conn.(*net.TCPConn).SetLinger(0) // Close sends a reset
	c.Close()
	calls.await(t, 1)
	waitFor(t, "close log", func() bool { return logs.FilterMessage("websocket closed").Len() == 1 })
	f := logs.FilterMessage("websocket closed").All()[0].ContextMap()
	if f["closedBy"] != "connection-lost" || f["closeCode"] != int64(1006) {
		t.Fatalf("close log %v, want connection-lost 1006", f)
	}
}

// TestPeerCloseWhileWriting: a peer's close frame, read while another
// goroutine writes, is the cause of the socket's end, not the write that
// fails because the connection was closed in between.
func TestPeerCloseWhileWriting(t *testing.T) {
	const clients = 50
	causes := make(chan error, clients)
	_, srv := server(t, chiws.Options{}, func(r chi.Router) {
		r.Get("/ws", func(w http.ResponseWriter, r *http.Request) {
			c, err := chiws.Accept(w, r, nil)
			if err != nil {
				return
			}
			ctx := c.Context()
			wrote := make(chan struct{})
			go func() { // owned by the handler, which waits on wrote
				defer close(wrote)
				for c.Write(ctx, websocket.MessageText, []byte("tick")) == nil {
				}
			}()
			for {
				if _, _, err := c.Read(ctx); err != nil {
					break
				}
			}
			<-wrote
			causes <- context.Cause(ctx)
		})
	})
	for range clients {
		c := dial(t, wsURL(srv, "/ws"), nil)
		if _, _, err := c.Read(testCtx(t)); err != nil { // the writer is running
			t.Fatal(err)
		}
		c.Close(websocket.StatusNormalClosure, "bye")
	}
	for range clients {
		if cause := <-causes; !errors.Is(cause, chiws.ErrClosedByPeer) || websocket.CloseStatus(cause) != websocket.StatusNormalClosure {
			t.Fatalf("cause %v, want the peer's 1000", cause)
		}
	}
}

// TestCloseReadSeesPeerClose: a write-only handler's CloseRead processes
// the peer's close frame, and its code reaches Conn.Context's cause and
// the close log; a data message closes the socket with 1008.
func TestCloseReadSeesPeerClose(t *testing.T) {
	logger, logs := observedLogger()
	causes := make(chan error, 2)
	_, srv := server(t, chiws.Options{Logger: logger}, func(r chi.Router) {
		r.Get("/ws", func(w http.ResponseWriter, r *http.Request) {
			c, err := chiws.Accept(w, r, nil)
			if err != nil {
				return
			}
			ctx := c.CloseRead(c.Context())
			if err := c.Write(ctx, websocket.MessageText, []byte("hello")); err != nil {
				return
			}
			<-ctx.Done()
			causes <- context.Cause(c.Context())
		})
	})
	c := dial(t, wsURL(srv, "/ws"), nil)
	if _, _, err := c.Read(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	c.Close(4000, "bye")
	if cause := <-causes; !errors.Is(cause, chiws.ErrClosedByPeer) || websocket.CloseStatus(cause) != 4000 {
		t.Errorf("cause %v, want the peer's 4000", cause)
	}
	waitFor(t, "close log", func() bool { return logs.FilterMessage("websocket closed").Len() == 1 })
	if f := logs.FilterMessage("websocket closed").All()[0].ContextMap(); f["closedBy"] != "client" || f["closeCode"] != int64(4000) {
		t.Errorf("close log %v", f)
	}

	c = dial(t, wsURL(srv, "/ws"), nil)
	if _, _, err := c.Read(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	if err := c.Write(testCtx(t), websocket.MessageText, []byte("unexpected")); err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.Read(testCtx(t)); websocket.CloseStatus(err) != websocket.StatusPolicyViolation {
		t.Errorf("read after a data message = %v, want 1008", err)
	}
	<-causes
}

// TestReadJSON: ReadJSON decodes a JSON text message; as wsjson.Read
// does, a binary message closes the socket with 1003 and invalid JSON
// with 1007, both the server's doing; the peer's close read through
// ReadJSON is the peer's, not a lost connection.
func TestReadJSON(t *testing.T) {
	type msg struct {
		N int `json:"n"`
	}
	tests := []struct {
		name     string
		then     func(ctx context.Context, c *websocket.Conn) error // the client's second message
		wantBy   error
		wantCode websocket.StatusCode // the cause's, the client's and the close log's
		closedBy string
	}{
		{"binary message", func(ctx context.Context, c *websocket.Conn) error {
			return c.Write(ctx, websocket.MessageBinary, []byte(`{"n":2}`))
		}, chiws.ErrClosedByServer, websocket.StatusUnsupportedData, "server"},
		{"invalid JSON", func(ctx context.Context, c *websocket.Conn) error {
			return c.Write(ctx, websocket.MessageText, []byte(`{"n":`))
		}, chiws.ErrClosedByServer, websocket.StatusInvalidFramePayloadData, "server"},
		{"the peer closes", func(ctx context.Context, c *websocket.Conn) error {
			return c.Close(websocket.StatusNormalClosure, "bye")
		}, chiws.ErrClosedByPeer, websocket.StatusNormalClosure, "client"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			type result struct {
				first    msg
				err      error // the second ReadJSON's
				doneThen bool  // Done was closed when it returned
				cause    error
			}
			got := make(chan result, 1)
			_, srv, logs := relServer(t, chiws.Options{}, nil, func(r chi.Router) {
				r.Get("/ws", func(w http.ResponseWriter, r *http.Request) {
					c, err := chiws.Accept(w, r, nil)
					if err != nil {
						return
					}
					var res result
					if err := c.ReadJSON(c.Context(), &res.first); err != nil {
						res.err = fmt.Errorf("the first ReadJSON: %w", err)
						got <- res
						return
					}
					if err := c.WriteJSON(c.Context(), res.first); err != nil {
						res.err = fmt.Errorf("WriteJSON: %w", err)
						got <- res
						return
					}
					var second msg
					res.err = c.ReadJSON(c.Context(), &second)
					select {
					case <-c.Done():
						res.doneThen = true
					default:
					}
					res.cause = context.Cause(c.Context())
					got <- res
				})
			})
			ctx := testCtx(t)
			c := dial(t, wsURL(srv, "/ws"), nil)
			if err := c.Write(ctx, websocket.MessageText, []byte(`{"n":42}`)); err != nil {
				t.Fatal(err)
			}
			if typ, p, err := c.Read(ctx); err != nil || typ != websocket.MessageText || string(p) != `{"n":42}` {
				t.Fatalf("client read %v %q %v, want the JSON echoed as text", typ, p, err)
			}
			if err := tt.then(ctx, c); err != nil {
				t.Fatal(err)
			}
			if tt.wantBy == chiws.ErrClosedByServer {
				if _, _, err := c.Read(ctx); websocket.CloseStatus(err) != tt.wantCode {
					t.Errorf("client read %v, want close %d", err, tt.wantCode)
				}
			}
			var res result
			select {
			case res = <-got:
			case <-ctx.Done():
				t.Fatal("the handler never returned")
			}
			if res.first.N != 42 {
				t.Errorf("ReadJSON decoded %+v, want n 42", res.first)
			}
			if res.err == nil {
				t.Fatal("the second ReadJSON succeeded")
			}
			if !res.doneThen {
				t.Errorf("Done was not closed when ReadJSON returned %v", res.err)
			}
			if !errors.Is(res.cause, tt.wantBy) || websocket.CloseStatus(res.cause) != tt.wantCode {
				t.Errorf("cause %v, want %v with %d", res.cause, tt.wantBy, tt.wantCode)
			}
			if tt.wantCode != websocket.StatusInvalidFramePayloadData && websocket.CloseStatus(res.err) != tt.wantCode {
				t.Errorf("ReadJSON = %v, want close status %d", res.err, tt.wantCode) // invalid JSON: the json error
			}
			waitFor(t, "close log", func() bool { return logs.FilterMessage("websocket closed").Len() == 1 })
			if f := logs.FilterMessage("websocket closed").All()[0].ContextMap(); f["closedBy"] != tt.closedBy || f["closeCode"] != int64(tt.wantCode) {
				t.Errorf("close log %v, want closedBy %q closeCode %d", f, tt.closedBy, tt.wantCode)
			}
		})
	}
}

// TestWriteJSON: WriteJSON sends v as a JSON text message; a value that
// cannot be marshalled fails before touching the socket, which stays open.
func TestWriteJSON(t *testing.T) {
	results := make(chan error, 1)
	_, srv := server(t, chiws.Options{}, func(r chi.Router) {
		r.Get("/ws", func(w http.ResponseWriter, r *http.Request) {
			c, err := chiws.Accept(w, r, nil)
			if err != nil {
				return
			}
			err = c.WriteJSON(c.Context(), make(chan int))
			var ute *json.UnsupportedTypeError
			select {
			case <-c.Done():
				err = fmt.Errorf("the socket ended: %v", context.Cause(c.Context()))
			default:
				if !errors.As(err, &ute) {
					err = fmt.Errorf("WriteJSON(chan) = %v, want a *json.UnsupportedTypeError", err)
				} else {
					err = c.WriteJSON(c.Context(), map[string]any{"ok": true, "n": 1})
				}
			}
			results <- err
			if err == nil {
				_, _, _ = c.Read(c.Context()) // until the client closes
			}
		})
	})
	ctx := testCtx(t)
	c := dial(t, wsURL(srv, "/ws"), nil)
	typ, p, err := c.Read(ctx)
	if err != nil || typ != websocket.MessageText || string(p) != `{"n":1,"ok":true}` {
		t.Errorf("client read %v %q %v, want the JSON as text", typ, p, err)
	}
	if err := <-results; err != nil {
		t.Fatal(err)
	}
	c.Close(websocket.StatusNormalClosure, "")
}

// TestCloseReadIdempotent: CloseRead returns its first call's context to
// every call; the peer's close is recorded as the peer's, and a data
// message closes the socket with 1008, the server's doing.
func TestCloseReadIdempotent(t *testing.T) {
	tests := []struct {
		name     string
		client   func(ctx context.Context, c *websocket.Conn) error
		wantBy   error
		wantCode websocket.StatusCode
	}{
		{"the peer closes", func(ctx context.Context, c *websocket.Conn) error {
			return c.Close(4000, "bye")
		}, chiws.ErrClosedByPeer, 4000},
		{"a data message", func(ctx context.Context, c *websocket.Conn) error {
			if err := c.Write(ctx, websocket.MessageText, []byte("unexpected")); err != nil {
				return err
			}
			if _, _, err := c.Read(ctx); websocket.CloseStatus(err) != websocket.StatusPolicyViolation {
				return fmt.Errorf("read after a data message = %v, want 1008", err)
			}
			return nil
		}, chiws.ErrClosedByServer, websocket.StatusPolicyViolation},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			type result struct {
				same, cancelled bool
				cause           error
			}
			got := make(chan result, 1)
			_, srv := server(t, chiws.Options{}, func(r chi.Router) {
				r.Get("/ws", func(w http.ResponseWriter, r *http.Request) {
					c, err := chiws.Accept(w, r, nil)
					if err != nil {
						return
					}
					first := c.CloseRead(c.Context())
					second := c.CloseRead(context.Background())
					if err := c.Write(c.Context(), websocket.MessageText, []byte("ready")); err != nil {
						return
					}
					_ = c.Wait(context.Background())
					res := result{same: first == second, cause: context.Cause(c.Context())}
					select {
					case <-first.Done():
						res.cancelled = true
					case <-time.After(testTimeout):
					}
					got <- res
				})
			})
			ctx := testCtx(t)
			c := dial(t, wsURL(srv, "/ws"), nil)
			if _, _, err := c.Read(ctx); err != nil {
				t.Fatal(err)
			}
			if err := tt.client(ctx, c); err != nil {
				t.Error(err)
			}
			var res result
			select {
			case res = <-got:
			case <-ctx.Done():
				t.Fatal("the handler never returned")
			}
			if !res.same {
				t.Error("a second CloseRead returned another context")
			}
			if !res.cancelled {
				t.Error("CloseRead's context was not cancelled when the socket ended")
			}
			if !errors.Is(res.cause, tt.wantBy) || websocket.CloseStatus(res.cause) != tt.wantCode {
				t.Errorf("cause %v, want %v with %d", res.cause, tt.wantBy, tt.wantCode)
			}
		})
	}
}
