package http2test

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/chiws/chiws"
	"github.com/chiws/chiws/internal/wstest"
	"github.com/coder/websocket"
	"github.com/go-chi/chi/v5"
)

// TestEcho: a GET route receives the extended CONNECT, Accept answers 200
// (no 101, no upgrade headers), and both message types, a 1 MiB message
// and a close code cross the stream.
func TestEcho(t *testing.T) {
	forModes(t, func(t *testing.T, mode string) {
		ctxs := make(chan context.Context, 1)
		s := startServer(t, mode, chiws.Options{ReadLimit: 2 << 20}, nil, func(r chi.Router) {
			r.Get("/ws", func(w http.ResponseWriter, r *http.Request) {
				if !chiws.IsWebSocketRequest(r) || r.ProtoMajor != 2 {
					http.Error(w, "not an HTTP/2 WebSocket", http.StatusBadRequest)
					return
				}
				c, err := chiws.Accept(w, r, &chiws.AcceptOptions{ReadLimit: 2 << 20})
				if err != nil {
					return
				}
				ctxs <- c.Context()
				c.SetReadLimit(2 << 20)
				_ = wstest.EchoLoop(c)
			})
		})
		var server *http.Response // the server's own answer to the extended CONNECT
		c, _, err := websocket.Dial(testCtx(t), s.url("/ws"), s.dialOptions(nil, func(r *http.Response) { server = r }))
		if err != nil {
			t.Fatal(err)
		}
		defer c.CloseNow()
		if server.StatusCode != http.StatusOK {
			t.Errorf("server answered %q, want 200 OK", server.Status)
		}
		for _, k := range []string{"Upgrade", "Connection", "Sec-Websocket-Accept"} {
			if _, ok := server.Header[k]; ok {
				t.Errorf("the 200 carries the HTTP/1.1 header %s", k)
			}
		}
		c.SetReadLimit(2 << 20)
		ctx := testCtx(t)
		big := bytes.Repeat([]byte("0123456789abcdef"), 1<<16) // 1 MiB
		for _, m := range []struct {
			typ websocket.MessageType
			p   []byte
		}{{websocket.MessageText, []byte("héllo")}, {websocket.MessageBinary, []byte{0, 1, 2}}, {websocket.MessageBinary, big}} {
			if err := c.Write(ctx, m.typ, m.p); err != nil {
				t.Fatal(err)
			}
			typ, p, err := c.Read(ctx)
			if err != nil || typ != m.typ || !bytes.Equal(p, m.p) {
				t.Fatalf("echo of %d bytes: %v %d bytes %v", len(m.p), typ, len(p), err)
			}
		}
		sctx := <-ctxs
		if err := c.Close(4000, "bye"); err != nil {
			t.Fatalf("close: %v", err)
		}
		select {
		case <-sctx.Done():
		case <-ctx.Done():
			t.Fatal("the server's Conn.Context was not cancelled")
		}
		if cause := context.Cause(sctx); !errors.Is(cause, chiws.ErrClosedByPeer) || websocket.CloseStatus(cause) != 4000 {
			t.Errorf("cause = %v, want the peer's 4000", cause)
		}
		waitFor(t, "close log", func() bool { return s.logs.FilterMessage("websocket closed").Len() == 1 })
		acc := s.logs.FilterMessage("websocket accepted").All()
		if len(acc) != 1 || acc[0].ContextMap()["proto"] != "HTTP/2.0" {
			t.Errorf("accepted log: %v", acc)
		}
		if f := s.logs.FilterMessage("websocket closed").All()[0].ContextMap(); f["closeCode"] != int64(4000) || f["closedBy"] != "client" {
			t.Errorf("close log %v", f)
		}
	})
}

// TestNegotiation: subprotocols and permessage-deflate negotiate as over
// HTTP/1.1, and the request is marked for the route.
func TestNegotiation(t *testing.T) {
	forModes(t, func(t *testing.T, mode string) {
		requested := make(chan []string, 1)
		s := startServer(t, mode, chiws.Options{
			Subprotocols:    []string{"v2", "v1"},
			CompressionMode: websocket.CompressionContextTakeover,
		}, nil, func(r chi.Router) {
			r.Get("/ws", func(w http.ResponseWriter, r *http.Request) {
				requested <- chiws.RequestedProtocols(r)
				echo(w, r)
			})
		})
		c, resp := s.dial(t, "/ws", &websocket.DialOptions{
			Subprotocols:    []string{"v1", "v2"},
			CompressionMode: websocket.CompressionContextTakeover,
		})
		if got := <-requested; strings.Join(got, ",") != "v1,v2" {
			t.Errorf("RequestedProtocols = %v", got)
		}
		if c.Subprotocol() != "v2" {
			t.Errorf("subprotocol %q, want the server's preference v2", c.Subprotocol())
		}
		if ext := resp.Header.Get("Sec-WebSocket-Extensions"); !strings.Contains(ext, "permessage-deflate") {
			t.Errorf("extensions %q, want permessage-deflate", ext)
		}
		ctx := testCtx(t)
		msg := bytes.Repeat([]byte("compressible "), 2000) // 26 KB, under the read limit
		if err := c.Write(ctx, websocket.MessageText, msg); err != nil {
			t.Fatal(err)
		}
		if _, p, err := c.Read(ctx); err != nil || !bytes.Equal(p, msg) {
			t.Fatalf("compressed echo: %d bytes, %v", len(p), err)
		}
		c.Close(websocket.StatusNormalClosure, "")
	})
}

// TestRefusals: the origin policy, the connection limit and the handshake
// checks answer HTTP/2 requests as they answer HTTP/1.1 ones.
func TestRefusals(t *testing.T) {
	forModes(t, func(t *testing.T, mode string) {
		s := startServer(t, mode, chiws.Options{MaxConnections: 1}, nil, func(r chi.Router) { r.Get("/ws", echo) })

		resp := s.dialStatus(t, "/ws", &websocket.DialOptions{HTTPHeader: http.Header{"Origin": {"https://evil.example"}}})
		if resp.StatusCode != http.StatusForbidden {
			t.Errorf("cross-site origin: %d, want 403", resp.StatusCode)
		}

		c, _ := s.dial(t, "/ws", nil)
		resp = s.dialStatus(t, "/ws", nil)
		if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
			t.Errorf("over MaxConnections: %d %v, want 503 with Retry-After", resp.StatusCode, resp.Header)
		}
		c.Close(websocket.StatusNormalClosure, "")

		// Version 8: the extended CONNECT sent by hand.
		req, _ := http.NewRequestWithContext(testCtx(t), http.MethodConnect, s.URL+"/ws", nil)
		req.Header.Set(":protocol", "websocket")
		req.Header.Set("Sec-WebSocket-Version", "8")
		resp, err := s.tr.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusUpgradeRequired || resp.Header.Get("Sec-WebSocket-Version") != "13" {
			t.Errorf("version 8: %d %v, want 426 with Sec-WebSocket-Version: 13", resp.StatusCode, resp.Header)
		}
		if st := s.ws.Stats(); st.RejectedOrigin != 1 || st.RejectedLimit != 1 || st.RejectedHandshake != 1 {
			t.Errorf("stats %+v", st)
		}
	})
}

// TestServeMuxRoute: a ServeMux "GET /ws" pattern receives the extended
// CONNECT when the middleware wraps the mux.
func TestServeMuxRoute(t *testing.T) {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /ws", echo)
	ws := chiws.New(chiws.Options{})
	s := startServer(t, "h2c", chiws.Options{}, func(srv *http.Server) { srv.Handler = ws.Handler(mux) }, func(chi.Router) {})
	defer ws.Shutdown(context.Background())
	c, _ := s.dial(t, "/ws", nil)
	ctx := testCtx(t)
	if err := c.Write(ctx, websocket.MessageText, []byte("mux")); err != nil {
		t.Fatal(err)
	}
	if _, p, err := c.Read(ctx); err != nil || string(p) != "mux" {
		t.Fatalf("echo: %q %v", p, err)
	}
	c.Close(websocket.StatusNormalClosure, "")
}

// TestHandlerFaults: an early return and a panic close the stream's socket
// with 1011, as over HTTP/1.1, and nothing uses the ResponseWriter after
// the handler returned.
func TestHandlerFaults(t *testing.T) {
	forModes(t, func(t *testing.T, mode string) {
		s := startServer(t, mode, chiws.Options{}, nil, func(r chi.Router) {
			r.Get("/return", func(w http.ResponseWriter, r *http.Request) {
				chiws.Accept(w, r, nil)
			})
			r.Get("/panic", func(w http.ResponseWriter, r *http.Request) {
				if _, err := chiws.Accept(w, r, nil); err == nil {
					panic("boom")
				}
			})
		})
		for _, path := range []string{"/return", "/panic"} {
			c, _ := s.dial(t, path, nil)
			if _, _, err := c.Read(testCtx(t)); websocket.CloseStatus(err) != websocket.StatusInternalError {
				t.Errorf("%s: read = %v, want 1011", path, err)
			}
		}
		waitFor(t, "sockets closed", func() bool { return s.ws.Stats().Active == 0 })
		if st := s.ws.Stats(); st.EarlyReturns != 1 || st.Panics != 1 {
			t.Errorf("stats %+v", st)
		}
	})
}

// TestReadLimit: a message over the read limit closes the stream's socket
// with 1009.
func TestReadLimit(t *testing.T) {
	forModes(t, func(t *testing.T, mode string) {
		s := startServer(t, mode, chiws.Options{ReadLimit: 1024}, nil, func(r chi.Router) { r.Get("/ws", echo) })
		c, _ := s.dial(t, "/ws", nil)
		ctx := testCtx(t)
		if err := c.Write(ctx, websocket.MessageBinary, make([]byte, 4096)); err != nil {
			t.Fatal(err)
		}
		if _, _, err := c.Read(ctx); websocket.CloseStatus(err) != websocket.StatusMessageTooBig {
			t.Fatalf("read = %v, want 1009", err)
		}
	})
}

// TestKeepAliveAbortsSilentPeer: a peer that answers no ping is declared
// dead within interval + timeout, and its stream is reset.
func TestKeepAliveAbortsSilentPeer(t *testing.T) {
	forModes(t, func(t *testing.T, mode string) {
		returned := make(chan struct{})
		s := startServer(t, mode, chiws.Options{KeepAliveInterval: 100 * time.Millisecond, KeepAliveTimeout: 100 * time.Millisecond}, nil,
			func(r chi.Router) {
				r.Get("/ws", func(w http.ResponseWriter, r *http.Request) {
					defer close(returned)
					echo(w, r)
				})
			})
		c, _ := s.dial(t, "/ws", nil) // never reads: never answers a ping
		select {
		case <-returned:
		case <-testCtx(t).Done():
			t.Fatal("the silent peer was not detected")
		}
		if st := s.ws.Stats(); st.KeepAliveTimeouts != 1 {
			t.Errorf("stats %+v", st)
		}
		// The stream was reset: the client's read fails without a close
		// frame.
		if _, _, err := c.Read(testCtx(t)); err == nil || websocket.CloseStatus(err) != -1 {
			t.Errorf("client read after the abort = %v, want a reset stream", err)
		}
	})
}
