package endmatrix

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"time"

	"github.com/chiws/chiws"
	"github.com/chiws/chiws/internal/wstest"
	"github.com/coder/websocket"
)

// Rows is the end matrix: every way a socket ends, and what each witness
// says. docs/lifecycle.md's end table is rendered from it.
var Rows = []Row{
	// The peer closes.
	{
		Name:    "the peer closes with 1000",
		Handler: reads,
		Client:  func(e *Env, cl *Client) { _ = cl.WS.Close(websocket.StatusNormalClosure, "bye") },
		Want:    []Outcome{{Cause: chiws.ErrClosedByPeer, Code: 1000, Wire: 1000, ClosedBy: "client", LogCode: 1000}},
		Done:    Done{Call: "c.Read"},
	},
	{
		Name:    "the peer closes with 4000",
		Handler: reads,
		Client:  func(e *Env, cl *Client) { _ = cl.WS.Close(4000, "bye") },
		Want:    []Outcome{{Cause: chiws.ErrClosedByPeer, Code: 4000, Wire: 4000, ClosedBy: "client", LogCode: 4000}},
		Done:    Done{Call: "c.Read"},
	},

	// The peer vanishes: no close frame ever comes.
	{
		Name:    "the peer vanishes: FIN",
		Handler: reads,
		Client:  func(e *Env, cl *Client) { _ = cl.Fin() },
		Want:    []Outcome{{Cause: chiws.ErrConnectionLost, Code: None, Wire: Gone, ClosedBy: "connection-lost", LogCode: 1006}},
		Done:    Done{Call: "c.Read"},
	},
	{
		Name:    "the peer vanishes: reset (TCP RST, HTTP/2 RST_STREAM)",
		Handler: reads,
		Client:  func(e *Env, cl *Client) { _ = cl.Reset() },
		Want:    []Outcome{{Cause: chiws.ErrConnectionLost, Code: None, Wire: Gone, ClosedBy: "connection-lost", LogCode: 1006}},
		Done:    Done{Call: "c.Read"},
	},
	{
		// A network that drops everything, without FIN or reset: only the
		// keep-alive can tell.
		Name:    "the peer vanishes: black hole",
		Options: chiws.Options{KeepAliveInterval: 100 * time.Millisecond, KeepAliveTimeout: 100 * time.Millisecond},
		Proxy:   true,
		Handler: reads,
		Client:  func(e *Env, cl *Client) { e.Proxy.StallExisting() },
		Want: []Outcome{{Cause: chiws.ErrKeepAliveTimeout, Code: None, Wire: Gone, ClosedBy: "keepalive", LogCode: 1006,
			KeepAliveTimeouts: 1}},
		Done: Done{Call: "c.Read", Within: AfterKeepAlive},
	},

	// The peer breaks a rule: the server closes.
	{
		Name:    "a message over ReadLimit",
		Options: chiws.Options{ReadLimit: 1024},
		Handler: reads,
		Client: func(e *Env, cl *Client) {
			_ = cl.WS.Write(e.Ctx, websocket.MessageBinary, make([]byte, 4096))
			drain(e, cl)
		},
		Want: []Outcome{{Cause: chiws.ErrClosedByServer, Code: 1009, Wire: 1009, ClosedBy: "server", LogCode: 1009}},
		Done: Done{Call: "c.Read"},
	},
	{
		// coder/websocket's echo: the message writer is open when the 1009
		// goes out between its frames, and the close must not wait for it.
		Name:    "a message over ReadLimit while the handler streams its echo",
		Options: chiws.Options{ReadLimit: 1024},
		Handler: func(e *Env, c *chiws.Conn) {
			for {
				typ, r, err := c.Reader(c.Context())
				if e.Saw("c.Reader", err) {
					return
				}
				w, err := c.Writer(c.Context(), typ)
				if e.Saw("c.Writer", err) {
					return
				}
				_, err = io.Copy(w, r)
				if e.Saw("r.Read", err) {
					_ = w.Close()
					return
				}
				if e.Saw("w.Close", w.Close()) {
					return
				}
			}
		},
		Client: func(e *Env, cl *Client) {
			_ = cl.WS.Write(e.Ctx, websocket.MessageBinary, make([]byte, 4096))
			drain(e, cl)
		},
		Want: []Outcome{{Cause: chiws.ErrClosedByServer, Code: 1009, Wire: 1009, ClosedBy: "server", LogCode: 1009}},
		Done: Done{Call: "r.Read"},
	},
	{
		Name:    "a text message with invalid UTF-8",
		Handler: reads,
		Client: func(e *Env, cl *Client) {
			_ = cl.WS.Write(e.Ctx, websocket.MessageText, []byte{'a', 0xff, 0xfe})
			drain(e, cl)
		},
		Want: []Outcome{{Cause: chiws.ErrClosedByServer, Code: 1007, Wire: 1007, ClosedBy: "server", LogCode: 1007}},
		Done: Done{Call: "c.Read"},
	},
	{
		Name:    "a malformed frame (unmasked)",
		Handler: reads,
		Client: func(e *Env, cl *Client) {
			raw(e, cl, wstest.Frame{Fin: true, Opcode: wstest.OpText, Payload: []byte("unmasked")})
			drain(e, cl)
		},
		Want: []Outcome{{Cause: chiws.ErrClosedByServer, Code: 1002, Wire: 1002, ClosedBy: "server", LogCode: 1002}},
		Done: Done{Call: "c.Read"},
	},
	{
		// As wsjson.Read does.
		Name:    "ReadJSON of a binary message",
		Handler: readsJSON,
		Client: func(e *Env, cl *Client) {
			_ = cl.WS.Write(e.Ctx, websocket.MessageBinary, []byte(`{}`))
			drain(e, cl)
		},
		Want: []Outcome{{Cause: chiws.ErrClosedByServer, Code: 1003, Wire: 1003, ClosedBy: "server", LogCode: 1003}},
		Done: Done{Call: "c.ReadJSON"},
	},
	{
		Name: "a data message while the handler reads through CloseRead",
		Handler: func(e *Env, c *chiws.Conn) {
			c.CloseRead(c.Context())
			_ = c.Wait(e.Ctx)
		},
		Client: func(e *Env, cl *Client) {
			_ = cl.WS.Write(e.Ctx, websocket.MessageText, []byte("unexpected"))
			drain(e, cl)
		},
		Want: []Outcome{{Cause: chiws.ErrClosedByServer, Code: 1008, Wire: 1008, ClosedBy: "server", LogCode: 1008}},
		Done: Done{},
	},
	{
		// The refusal's close frame waits for the writer, which a single
		// frame to a peer that does not read holds: past CloseTimeout the
		// socket is aborted, and no close frame went out.
		Name:    "a text message with invalid UTF-8 while a large Write to a peer that does not read holds the writer",
		Options: chiws.Options{CloseTimeout: 300 * time.Millisecond},
		Handler: func(e *Env, c *chiws.Conn) {
			e.Go(func() { _ = c.Write(c.Context(), websocket.MessageBinary, make([]byte, 32<<20)) })
			reads(e, c)
		},
		Client: func(e *Env, cl *Client) {
			r := awaitMessage(e, cl) // the write holds the writer
			_ = cl.WS.Write(e.Ctx, websocket.MessageText, []byte{'a', 0xff, 0xfe})
			e.AwaitEnd()
			if r != nil {
				_, _ = io.Copy(io.Discard, r)
			}
			drain(e, cl)
		},
		Want: []Outcome{{Cause: chiws.ErrClosedByServer, Code: None, Wire: None, ClosedBy: "server", LogCode: 1006}},
		Done: Done{Call: "c.Read", Within: AfterCloseTimeout},
	},
	{
		// coder/websocket sends the 1002 itself between two frames of the
		// message; the writer's next frame fails, which frees the writer
		// for the close handshake: no wait for CloseTimeout.
		Name: "a malformed frame (reserved opcode) while a message from Writer is streamed",
		Handler: func(e *Env, c *chiws.Conn) {
			e.Go(func() { streams(e, c) })
			reads(e, c)
		},
		Client: func(e *Env, cl *Client) {
			e.Await("streaming")
			raw(e, cl, wstest.Frame{Fin: true, Opcode: 0x3, Masked: true})
			drain(e, cl)
		},
		Want: []Outcome{{Cause: chiws.ErrClosedByServer, Code: 1002, Wire: 1002, ClosedBy: "server", LogCode: 1002}},
		Done: Done{Call: "c.Read or w.Write"},
	},

	// The handler closes.
	{
		Name:    "the handler calls Close(4001)",
		Handler: closes(4001),
		Client:  drain,
		Want:    []Outcome{{Cause: chiws.ErrClosedByServer, Code: 4001, Wire: 4001, ClosedBy: "server", LogCode: 4001}},
		Done:    Done{Call: "c.Close"},
	},
	{
		// A code that may not be sent: coder/websocket sends 1011 instead,
		// and the cause says what was sent.
		Name:    "the handler calls Close(999)",
		Handler: closes(999),
		Client:  drain,
		Want:    []Outcome{{Cause: chiws.ErrClosedByServer, Code: 1011, Wire: 1011, ClosedBy: "server", LogCode: 1011}},
		Done:    Done{Call: "c.Close"},
	},
	{
		Name:    "the handler calls Close(1006)",
		Handler: closes(1006),
		Client:  drain,
		Want:    []Outcome{{Cause: chiws.ErrClosedByServer, Code: 1011, Wire: 1011, ClosedBy: "server", LogCode: 1011}},
		Done:    Done{Call: "c.Close"},
	},
	{
		// The close frame went out; CloseTimeout ends the wait for the
		// answer, and the cause keeps the code sent.
		Name:    "the handler calls Close(4001), the peer never answers",
		Options: chiws.Options{CloseTimeout: 300 * time.Millisecond},
		Handler: closes(4001),
		Client:  func(e *Env, cl *Client) { e.AwaitEnd(); drain(e, cl) },
		Want:    []Outcome{{Cause: chiws.ErrClosedByServer, Code: 4001, Wire: 4001, ClosedBy: "server", LogCode: 4001}},
		Done:    Done{Call: "c.Close", Within: AfterCloseTimeout},
	},
	{
		// A cause of the handler's own: the cause matches it and
		// ErrClosedByServer, and the close log gives its text.
		Name: "the handler calls CloseWith(cause, 4003)",
		Handler: func(e *Env, c *chiws.Conn) {
			_ = c.CloseWith(errTooSlow, 4003, "too slow")
			e.Ended("c.CloseWith")
		},
		Client: drain,
		Want: []Outcome{{Cause: chiws.ErrClosedByServer, By: errTooSlow, Code: 4003, Wire: 4003,
			ClosedBy: "server", LogCode: 4003}},
		Done: Done{Call: "c.CloseWith"},
	},
	{
		Name: "the handler calls CloseNow",
		Handler: func(e *Env, c *chiws.Conn) {
			_ = c.CloseNow()
			e.Ended("c.CloseNow")
		},
		Client: drain,
		Want:   []Outcome{{Cause: chiws.ErrClosedByServer, Code: None, Wire: None, ClosedBy: "server", LogCode: 1006}},
		Done:   Done{Call: "c.CloseNow"},
	},
	{
		// An abort with a cause of the handler's own (a hub's write
		// timeout): no close frame, and the cause is in the log.
		Name: "the handler calls CloseNowWith(cause)",
		Handler: func(e *Env, c *chiws.Conn) {
			_ = c.CloseNowWith(errTooSlow)
			e.Ended("c.CloseNowWith")
		},
		Client: drain,
		Want:   []Outcome{{Cause: chiws.ErrClosedByServer, By: errTooSlow, Code: None, Wire: None, ClosedBy: "server", LogCode: 1006}},
		Done:   Done{Call: "c.CloseNowWith"},
	},
	{
		// coder/websocket closes the connection when a read's context
		// ends while it waits: the handler's doing, not an early return.
		// The read is waiting once the client has its pong (a cancel while
		// the read writes the pong is another case: see lifecycle.md).
		Name: "the context of the handler's Read is cancelled while it waits",
		Handler: func(e *Env, c *chiws.Conn) {
			ctx, cancel := context.WithCancel(c.Context())
			defer cancel()
			e.Go(func() {
				if e.Await("pong received") {
					cancel()
				}
			})
			_, _, err := c.Read(ctx)
			if !e.Saw("c.Read", err) {
				e.T.Errorf("the read returned a message")
			}
		},
		Client: func(e *Env, cl *Client) {
			e.Go(func() { drain(e, cl) }) // coder/websocket's Ping needs a reader
			if err := cl.WS.Ping(e.Ctx); err != nil {
				e.T.Errorf("client Ping: %v", err)
			}
			e.Signal("pong received")
		},
		Want: []Outcome{{Cause: chiws.ErrClosedByServer, Code: None, Wire: None, ClosedBy: "server", LogCode: 1006}},
		Done: Done{Call: "c.Read"},
	},

	{
		// A message half read is half a frame on the connection: the
		// socket cannot go on, so the reader aborts it.
		Name: "the context of a Reader's reader ends mid-message",
		Handler: func(e *Env, c *chiws.Conn) {
			ctx, cancel := context.WithCancel(c.Context())
			defer cancel()
			_, r, err := c.Reader(ctx)
			if e.Saw("c.Reader", err) {
				return
			}
			if _, err := io.ReadFull(r, make([]byte, 16)); e.Saw("r.Read", err) {
				return
			}
			cancel()
			_, err = r.Read(make([]byte, 16))
			if !e.Saw("r.Read", err) {
				e.T.Errorf("the read went on after its context ended")
			}
		},
		Client: func(e *Env, cl *Client) {
			_ = cl.WS.Write(e.Ctx, websocket.MessageBinary, make([]byte, 4096))
			drain(e, cl)
		},
		Want: []Outcome{{Cause: chiws.ErrClosedByServer, Code: None, Wire: None, ClosedBy: "server", LogCode: 1006}},
		Done: Done{Call: "r.Read"},
	},
	{
		// A message read to its end leaves the socket whole: a context
		// that ends then changes nothing, and the reader keeps saying EOF.
		Name: "a Reader's reader read to its end, then its context ends",
		Handler: func(e *Env, c *chiws.Conn) {
			ctx, cancel := context.WithCancel(c.Context())
			defer cancel()
			_, r, err := c.Reader(ctx)
			if e.Saw("c.Reader", err) {
				return
			}
			if _, err := io.ReadAll(r); e.Saw("r.Read", err) {
				return
			}
			cancel()
			if _, err := r.Read(make([]byte, 1)); err != io.EOF {
				e.T.Errorf("read after the end: %v, want io.EOF", err)
			}
			if e.Saw("c.Write", c.Write(c.Context(), websocket.MessageText, []byte("still open"))) {
				return
			}
			reads(e, c)
		},
		Client: func(e *Env, cl *Client) {
			_ = cl.WS.Write(e.Ctx, websocket.MessageBinary, []byte("hello"))
			if _, p, err := cl.WS.Read(e.Ctx); err != nil || string(p) != "still open" {
				e.T.Errorf("client read %q %v, want \"still open\"", p, err)
			}
			_ = cl.WS.Close(4000, "bye")
		},
		Want: []Outcome{{Cause: chiws.ErrClosedByPeer, Code: 4000, Wire: 4000, ClosedBy: "client", LogCode: 4000}},
		Done: Done{Call: "c.Read"},
	},
	{
		// A message broken off mid-way cannot be finished: the writer
		// aborts the socket, as coder/websocket may, but surely.
		Name: "the context of a Writer's message ends between two frames",
		Handler: func(e *Env, c *chiws.Conn) {
			ctx, cancel := context.WithCancel(c.Context())
			defer cancel()
			w, err := c.Writer(ctx, websocket.MessageBinary)
			if e.Saw("c.Writer", err) {
				return
			}
			if _, err := w.Write([]byte("first frame")); e.Saw("w.Write", err) {
				return
			}
			cancel()
			_, err = w.Write([]byte("second frame"))
			if !e.Saw("w.Write", err) {
				e.T.Errorf("the message went on after its context ended")
			}
		},
		Client: drain,
		Want:   []Outcome{{Cause: chiws.ErrClosedByServer, Code: None, Wire: None, ClosedBy: "server", LogCode: 1006}},
		Done:   Done{Call: "w.Write"},
	},
	{
		// coder/websocket closes the connection when a write's context
		// ends while it writes: the handler's doing, not an early return.
		// The write is under way once the client has the message's start,
		// and cannot finish: the client reads no more.
		Name: "the context of the handler's Write ends mid-message to a peer that does not read",
		Handler: func(e *Env, c *chiws.Conn) {
			ctx, cancel := context.WithCancel(c.Context())
			defer cancel()
			e.Go(func() {
				if e.Await("message begun") {
					cancel()
				}
			})
			err := c.Write(ctx, websocket.MessageBinary, make([]byte, 32<<20))
			if !e.Saw("c.Write", err) {
				e.T.Errorf("the write of 32 MiB to a peer that does not read succeeded")
			}
		},
		Client: func(e *Env, cl *Client) {
			r := awaitMessage(e, cl)
			e.Signal("message begun")
			e.AwaitEnd()
			if r != nil {
				_, _ = io.Copy(io.Discard, r)
			}
			drain(e, cl)
		},
		Want: []Outcome{{Cause: chiws.ErrClosedByServer, Code: None, Wire: None, ClosedBy: "server", LogCode: 1006}},
		Done: Done{Call: "c.Write"},
	},

	// The handler returns.
	{
		// The handler reads through CloseRead and waits: the peer's close
		// ends the socket before the handler returns.
		Name: "the handler waits (CloseRead, Wait), the peer closes with 4000",
		Handler: func(e *Env, c *chiws.Conn) {
			c.CloseRead(c.Context())
			_ = c.Wait(e.Ctx)
		},
		Client: func(e *Env, cl *Client) { _ = cl.WS.Close(4000, "bye") },
		Want:   []Outcome{{Cause: chiws.ErrClosedByPeer, Code: 4000, Wire: 4000, ClosedBy: "client", LogCode: 4000}},
		Done:   Done{},
	},
	{
		// Nothing read the peer's close frame: the socket was open when the
		// handler returned, and the middleware's 1011 crosses it.
		Name: "the handler returns, the peer's close frame unread",
		Handler: func(e *Env, c *chiws.Conn) {
			e.Await("peer closed")
		},
		Client: func(e *Env, cl *Client) {
			raw(e, cl, wstest.Frame{Fin: true, Opcode: wstest.OpClose, Masked: true, Payload: wstest.ClosePayload(4000, "bye")})
			e.Signal("peer closed")
			drain(e, cl)
		},
		Want: []Outcome{{Cause: chiws.ErrHandlerReturned, Code: 1011, Wire: 1011, ClosedBy: "handler-return", LogCode: 1011,
			EarlyReturns: 1}},
		Done: Done{},
	},
	{
		Name:    "early return",
		Handler: func(e *Env, c *chiws.Conn) {},
		Client:  drain,
		Want: []Outcome{{Cause: chiws.ErrHandlerReturned, Code: 1011, Wire: 1011, ClosedBy: "handler-return", LogCode: 1011,
			EarlyReturns: 1}},
		Done: Done{},
	},
	{
		Name: "early return, a goroutine reading",
		Handler: func(e *Env, c *chiws.Conn) {
			e.Go(func() {
				e.Signal("reading")
				for {
					if _, _, err := c.Read(c.Context()); err != nil {
						return
					}
				}
			})
			e.Await("reading")
		},
		Client: drain,
		Want: []Outcome{{Cause: chiws.ErrHandlerReturned, Code: 1011, Wire: 1011, ClosedBy: "handler-return", LogCode: 1011,
			EarlyReturns: 1}},
		Done: Done{},
	},
	{
		Name: "early return, a goroutine writing",
		Handler: func(e *Env, c *chiws.Conn) {
			e.Go(func() {
				for i := 0; ; i++ {
					if err := c.Write(c.Context(), websocket.MessageText, []byte("tick")); err != nil {
						return
					}
					if i == 0 {
						e.Signal("writing")
					}
				}
			})
			e.Await("writing")
		},
		Client: drain,
		Want: []Outcome{{Cause: chiws.ErrHandlerReturned, Code: 1011, Wire: 1011, ClosedBy: "handler-return", LogCode: 1011,
			EarlyReturns: 1}},
		Done: Done{},
	},
	{
		// A write that timed out waiting for another writer leaves the
		// socket open: the return that follows is an early return.
		Name:    "early return after a timed-out contended write",
		Handler: contendedWrite,
		Client: func(e *Env, cl *Client) {
			readWriters(e, cl)
			drain(e, cl)
		},
		Want: []Outcome{{Cause: chiws.ErrHandlerReturned, Code: 1011, Wire: 1011, ClosedBy: "handler-return", LogCode: 1011,
			EarlyReturns: 1}},
		Done: Done{},
	},
	{
		Name: "a timed-out contended write, then the peer closes with 4000",
		Handler: func(e *Env, c *chiws.Conn) {
			contendedWrite(e, c)
			reads(e, c)
		},
		Client: func(e *Env, cl *Client) {
			readWriters(e, cl)
			_ = cl.WS.Close(4000, "bye")
		},
		Want: []Outcome{{Cause: chiws.ErrClosedByPeer, Code: 4000, Wire: 4000, ClosedBy: "client", LogCode: 4000}},
		Done: Done{Call: "c.Read"},
	},

	// The handler panics.
	{
		Name:    "panic",
		Handler: func(e *Env, c *chiws.Conn) { panic("boom") },
		Client:  drain,
		Want:    []Outcome{{Cause: chiws.ErrHandlerPanicked, Code: 1011, Wire: 1011, ClosedBy: "panic", LogCode: 1011, Panics: 1}},
		Done:    Done{},
	},
	{
		// net/http's "abort quietly": aborted, not counted, and panicked
		// again for net/http (or chi's Recoverer).
		Name:    "panic(http.ErrAbortHandler)",
		Handler: func(e *Env, c *chiws.Conn) { panic(http.ErrAbortHandler) },
		Client:  drain,
		RePanic: http.ErrAbortHandler,
		Want:    []Outcome{{Cause: chiws.ErrHandlerPanicked, Code: None, Wire: None, ClosedBy: "panic", LogCode: 1006}},
		Done:    Done{},
	},

	// The keep-alive.
	{
		// The client never reads, so it never answers a ping.
		Name:    "keep-alive timeout (the peer never reads)",
		Options: chiws.Options{KeepAliveInterval: 100 * time.Millisecond, KeepAliveTimeout: 100 * time.Millisecond},
		Handler: reads,
		Client:  func(e *Env, cl *Client) { e.AwaitEnd(); drain(e, cl) },
		Want: []Outcome{{Cause: chiws.ErrKeepAliveTimeout, Code: None, Wire: None, ClosedBy: "keepalive", LogCode: 1006,
			KeepAliveTimeouts: 1}},
		Done: Done{Call: "c.Read", Within: AfterKeepAlive},
	},

	// Shutdown.
	{
		Name:    "Shutdown, idle socket",
		Handler: reads,
		Client:  func(e *Env, cl *Client) { e.Shutdown(); drain(e, cl) },
		Want:    []Outcome{{Cause: chiws.ErrShuttingDown, Code: 1001, Wire: 1001, ClosedBy: "shutdown", LogCode: 1001}},
		Done:    Done{Call: "c.Read"},
	},
	{
		// The 1001 went out; CloseTimeout ends the wait for the answer.
		Name:    "Shutdown, the peer never answers",
		Options: chiws.Options{CloseTimeout: 300 * time.Millisecond},
		Handler: reads,
		Client:  func(e *Env, cl *Client) { e.Shutdown(); e.AwaitEnd(); drain(e, cl) },
		Want:    []Outcome{{Cause: chiws.ErrShuttingDown, Code: 1001, Wire: 1001, ClosedBy: "shutdown", LogCode: 1001}},
		Done:    Done{Call: "c.Read", Within: AfterCloseTimeout},
	},
	{
		// The 1001 went out; the end of Shutdown's context aborts the
		// socket, long before CloseTimeout (5 s).
		Name:    "Shutdown whose context ends, the peer never answers",
		Handler: reads,
		Client:  func(e *Env, cl *Client) { e.ShutdownExpiring(); e.AwaitEnd(); drain(e, cl) },
		Want:    []Outcome{{Cause: chiws.ErrShuttingDown, Code: 1001, Wire: 1001, ClosedBy: "shutdown", LogCode: 1001}},
		Done:    Done{Call: "c.Read", Within: AfterShutdownDeadline},
	},
	{
		// The close frame waits for the message being written, then goes
		// out.
		Name:    "Shutdown during a large write",
		Handler: largeWrite(4 << 20),
		Client: func(e *Env, cl *Client) {
			cl.WS.SetReadLimit(-1)
			e.Await("writing")
			e.Shutdown()
			drain(e, cl)
		},
		Want: []Outcome{{Cause: chiws.ErrShuttingDown, Code: 1001, Wire: 1001, ClosedBy: "shutdown", LogCode: 1001}},
		// The 1001 goes between two frames of the message (RFC 6455 5.4).
		Done: Done{Call: "w.Write or w.Close or c.Read", Within: AfterCloseTimeout},
	},
	{
		// The message is not done within CloseTimeout: the socket is
		// aborted, and no close frame went out. (A race in principle: a
		// fast enough reader gets the 1001.)
		Name:    "Shutdown during a large write to a slow reader",
		Options: chiws.Options{CloseTimeout: 300 * time.Millisecond},
		Handler: largeWrite(32 << 20),
		Client: func(e *Env, cl *Client) {
			cl.WS.SetReadLimit(-1)
			e.Await("writing")
			e.Shutdown()
			slowDrain(e, cl)
		},
		Want: []Outcome{
			{Cause: chiws.ErrShuttingDown, Code: None, Wire: None, ClosedBy: "shutdown", LogCode: 1006},
			{Cause: chiws.ErrShuttingDown, Code: 1001, Wire: 1001, ClosedBy: "shutdown", LogCode: 1001},
		},
		Done: Done{Call: "w.Write or w.Close or c.Read", Within: AfterCloseTimeout},
	},
	{
		Name: "Shutdown racing an early return",
		Handler: func(e *Env, c *chiws.Conn) {
			e.Await("return")
		},
		Client: func(e *Env, cl *Client) {
			e.Signal("return")
			e.Shutdown()
			drain(e, cl)
		},
		Want: []Outcome{
			{Cause: chiws.ErrHandlerReturned, Code: 1011, Wire: 1011, ClosedBy: "handler-return", LogCode: 1011, EarlyReturns: 1},
			{Cause: chiws.ErrShuttingDown, Code: 1001, Wire: 1001, ClosedBy: "shutdown", LogCode: 1001},
		},
		Done: Done{},
	},
	{
		Name:    "Shutdown racing the peer's close (4000)",
		Handler: reads,
		Client: func(e *Env, cl *Client) {
			e.Shutdown()
			_ = cl.WS.Close(4000, "bye")
		},
		Want: []Outcome{
			{Cause: chiws.ErrClosedByPeer, Code: 4000, Wire: 4000, ClosedBy: "client", LogCode: 4000},
			{Cause: chiws.ErrShuttingDown, Code: 1001, Wire: 1001, ClosedBy: "shutdown", LogCode: 1001},
			{Cause: chiws.ErrShuttingDown, Code: 1001, Wire: 4000, ClosedBy: "shutdown", LogCode: 1001, Crossed: true},
		},
		Done: Done{Call: "c.Read"},
	},
}

// reads is a handler that reads until the socket ends.
func reads(e *Env, c *chiws.Conn) {
	for {
		if _, _, err := c.Read(c.Context()); e.Saw("c.Read", err) {
			return
		}
	}
}

// readsJSON is a handler that reads JSON until the socket ends.
func readsJSON(e *Env, c *chiws.Conn) {
	for {
		var v any
		if err := c.ReadJSON(c.Context(), &v); e.Saw("c.ReadJSON", err) {
			return
		}
	}
}

// errTooSlow is a cause of the handler's own, for CloseWith.
var errTooSlow = errors.New("too slow for the room")

// streams writes a text message through c.Writer, a chunk every 10 ms,
// signalling "streaming" once it holds the writer, until a chunk fails.
func streams(e *Env, c *chiws.Conn) {
	w, err := c.Writer(c.Context(), websocket.MessageText)
	if err != nil {
		e.T.Errorf("Writer: %v", err)
		return
	}
	e.Signal("streaming")
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		if _, err := w.Write([]byte("chunk")); e.Saw("w.Write", err) {
			return
		}
		select {
		case <-tick.C:
		case <-e.Ctx.Done():
			e.T.Errorf("the streamed message never failed")
			return
		}
	}
}

// awaitMessage waits, without a read limit, for the start of the server's
// next message, and returns its reader (nil, failing the row, when none
// comes).
func awaitMessage(e *Env, cl *Client) io.Reader {
	cl.WS.SetReadLimit(-1)
	_, r, err := cl.WS.Reader(e.Ctx)
	if err != nil {
		e.T.Errorf("client Reader: %v", err)
		return nil
	}
	return r
}

// closes returns a handler that closes the socket with code.
func closes(code websocket.StatusCode) func(e *Env, c *chiws.Conn) {
	return func(e *Env, c *chiws.Conn) {
		_ = c.Close(code, "done")
		e.Ended("c.Close")
	}
}

// writersMessage is what contendedWrite's writer sends.
const writersMessage = "from the writer"

// contendedWrite holds the socket's writer in a goroutine, fails a write
// with a short deadline against it, checks that the socket is still open,
// and lets the writer finish its message.
func contendedWrite(e *Env, c *chiws.Conn) {
	held, release, finished := make(chan struct{}), make(chan struct{}), make(chan struct{})
	e.Go(func() {
		defer close(finished)
		w, err := c.Writer(c.Context(), websocket.MessageText)
		close(held)
		if err != nil {
			e.T.Errorf("Writer: %v", err)
			return
		}
		<-release
		if _, err := w.Write([]byte(writersMessage)); err != nil {
			e.T.Errorf("the writer's Write: %v", err)
		}
		if err := w.Close(); err != nil {
			e.T.Errorf("the writer's Close: %v", err)
		}
	})
	<-held
	ctx, cancel := context.WithTimeout(c.Context(), 50*time.Millisecond)
	err := c.Write(ctx, websocket.MessageText, []byte("contended"))
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		e.T.Errorf("the contended write returned %v, want DeadlineExceeded", err)
	}
	select {
	case <-c.Done():
		e.T.Errorf("the contended write ended the socket: %v", context.Cause(c.Context()))
	default:
	}
	close(release)
	<-finished
}

// readWriters reads contendedWrite's message: the socket still works.
func readWriters(e *Env, cl *Client) {
	if _, p, err := cl.WS.Read(e.Ctx); err != nil || string(p) != writersMessage {
		e.T.Errorf("client read %q, %v; want %q", p, err, writersMessage)
	}
}

// largeWrite returns a handler that writes a message of size bytes in
// 64 KiB pieces, signalling "writing" once the first is out, then reads
// until the socket ends.
func largeWrite(size int) func(e *Env, c *chiws.Conn) {
	return func(e *Env, c *chiws.Conn) {
		w, err := c.Writer(c.Context(), websocket.MessageBinary)
		if e.Saw("c.Writer", err) {
			return
		}
		chunk := bytes.Repeat([]byte{'x'}, 64<<10)
		for i := range size / len(chunk) {
			if i == 1 {
				e.Signal("writing")
			}
			if _, err := w.Write(chunk); e.Saw("w.Write", err) {
				return
			}
		}
		if e.Saw("w.Close", w.Close()) {
			return
		}
		reads(e, c)
	}
}

// drain is a client that reads until its socket ends, discarding
// messages.
func drain(e *Env, cl *Client) {
	for {
		_, r, err := cl.WS.Reader(e.Ctx)
		if err != nil {
			return
		}
		if _, err := io.Copy(io.Discard, r); err != nil {
			return
		}
	}
}

// slowDrain is drain at 256 KiB per 50 ms (5 MiB/s) until the server's
// socket has ended, and at full speed after. The ticker paces the reader;
// nothing waits on it.
func slowDrain(e *Env, cl *Client) {
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		_, r, err := cl.WS.Reader(e.Ctx)
		if err != nil {
			return
		}
		for err == nil {
			select {
			case <-tick.C:
			case <-e.conn.Done():
			}
			_, err = io.CopyN(io.Discard, r, 256<<10)
		}
		if err != io.EOF {
			return
		}
	}
}

// raw writes f under the client (Client.Raw).
func raw(e *Env, cl *Client, f wstest.Frame) {
	if _, err := cl.Raw.Write(wstest.AppendFrame(nil, f)); err != nil {
		e.T.Errorf("raw write: %v", err)
	}
}
