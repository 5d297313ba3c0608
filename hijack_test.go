package chiws_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chiws/chiws"
	"github.com/chiws/chiws/internal/wstest"
	"github.com/coder/websocket"
	"github.com/go-chi/chi/v5"
	"go.uber.org/zap"
)

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
	// No Date either: net/http formats it while it hijacks, the deepest
	// point of the upgrade (see upgradeWriter.WriteHeader).
	for _, h := range []string{"Content-Length", "Transfer-Encoding", "Date"} {
		if _, ok := resp.Header[h]; ok {
			t.Errorf("101 carries %s", h)
		}
	}
}

// TestIdleSocketStack pins what writing the 101 in Hijack saves: a socket
// accepted under chi and the middleware keeps no more stack while it
// waits in Read than one accepted by coder/websocket alone on a bare
// handler. When net/http writes the 101 (the control: a wrapper below the
// middleware), the upgrade runs deep enough to double the handler
// goroutine's stack, which the runtime then keeps for the socket's life.
// Each candidate is measured in a process of its own, on one P: the
// runtime reuses the stacks of ended goroutines and caches stacks per P.
func TestIdleSocketStack(t *testing.T) {
	if c := os.Getenv(stackCandidateEnv); c != "" {
		fmt.Printf("STACK %s %.0f\n", c, idleStack(t, c))
		return
	}
	per := map[string]float64{}
	for _, c := range []string{"coder", "chiws", "control"} {
		cmd := exec.CommandContext(t.Context(), os.Args[0], "-test.run=^TestIdleSocketStack$", "-test.count=1", "-test.timeout=60s")
		cmd.Env = append(os.Environ(), stackCandidateEnv+"="+c, "GOMAXPROCS=1")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("measuring %s: %v\n%s", c, err, out)
		}
		var name string
		var v float64
		for _, l := range strings.Split(string(out), "\n") {
			if _, err := fmt.Sscanf(l, "STACK %s %f", &name, &v); err == nil {
				per[name] = v
			}
		}
		if _, ok := per[c]; !ok {
			t.Fatalf("measuring %s: no figure in\n%s", c, out)
		}
	}
	coder, chiwsStack, control := per["coder"], per["chiws"], per["control"]
	t.Logf("stack per idle socket: coder/websocket alone %.0f B, under chi and chiws %.0f B, with net/http writing the 101 %.0f B",
		coder, chiwsStack, control)
	if control-coder < 4096 {
		t.Skip("in this build net/http's 101 path does not grow the stack (the race detector's, say): nothing to compare")
	}
	if chiwsStack > (coder+control)/2 {
		t.Errorf("an idle socket under chi and chiws keeps %.0f B of stack: coder/websocket alone %.0f B, with net/http writing the 101 %.0f B",
			chiwsStack, coder, control)
	}
}

// stackCandidateEnv names the candidate a child process of
// TestIdleSocketStack measures.
const stackCandidateEnv = "CHIWS_TEST_STACK_CANDIDATE"

// idleStack returns the stack in use per socket while n sockets of the
// candidate wait in Read.
func idleStack(t *testing.T, candidate string) float64 {
	const n = 500
	var reading, ended atomic.Int64
	read := func(c interface {
		Read(context.Context) (websocket.MessageType, []byte, error)
	}) {
		reading.Add(1)
		defer ended.Add(1)
		_, _, _ = c.Read(context.Background())
	}
	var h http.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		defer c.CloseNow()
		read(c)
	})
	if candidate != "coder" {
		ws := chiws.New(chiws.Options{})
		router := chi.NewRouter()
		if candidate == "control" {
			router.Use(unwrapBelow)
		}
		router.Use(ws.Handler)
		router.Get("/ws", func(w http.ResponseWriter, r *http.Request) {
			c, err := chiws.Accept(w, r, nil)
			if err != nil {
				return
			}
			defer c.CloseNow()
			read(c)
		})
		h = router
	}
	srv := httptest.NewServer(h)
	defer srv.Close()
	var before, open runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	var conns []*wstest.Conn
	for range n {
		c, err := wstest.Handshake(hostOf(srv), "/ws", "")
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	waitFor(t, "every handler in Read", func() bool { return reading.Load() == n })
	runtime.GC() // shrinks the stacks the runtime can shrink
	runtime.GC()
	runtime.ReadMemStats(&open)
	for _, c := range conns {
		c.Close()
	}
	waitFor(t, "every handler returned", func() bool { return ended.Load() == n })
	return float64(int64(open.StackInuse)-int64(before.StackInuse)) / n
}

// unwrapBelow puts a wrapper with Unwrap below the middleware, as an
// access log does: the middleware then lets net/http write the 101.
func unwrapBelow(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		next.ServeHTTP(&unwrapWriter{w}, r)
	})
}

type unwrapWriter struct{ http.ResponseWriter }

func (u *unwrapWriter) Unwrap() http.ResponseWriter { return u.ResponseWriter }

// Hijack delegates, as chi's middleware.WrapResponseWriter does.
func (u *unwrapWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	return http.NewResponseController(u.ResponseWriter).Hijack()
}

// TestHeld101MatchesNetHTTP: the 101 that Hijack writes is, byte for
// byte, the one net/http writes under a wrapper (which the middleware
// lets through), with a subprotocol, compression, and a header value
// carrying CR LF set by another middleware.
func TestHeld101MatchesNetHTTP(t *testing.T) {
	raw := func(below func(http.Handler) http.Handler) string {
		ws := chiws.New(chiws.Options{Subprotocols: []string{"chat"}, CompressionMode: websocket.CompressionContextTakeover})
		r := chi.NewRouter()
		if below != nil {
			r.Use(below)
		}
		r.Use(ws.Handler)
		r.Use(func(next http.Handler) http.Handler {
			return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("X-Note", "a\r\nInjected: yes")
				next.ServeHTTP(w, r)
			})
		})
		r.Get("/ws", echo)
		srv := httptest.NewServer(r)
		defer srv.Close()
		defer func() { _ = ws.Shutdown(testCtx(t)) }()
		conn, err := net.Dial("tcp", srv.Listener.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		io.WriteString(conn, "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
			"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: "+validKey+"\r\n"+
			"Sec-WebSocket-Protocol: chat\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\r\n")
		conn.SetReadDeadline(time.Now().Add(testTimeout))
		br := bufio.NewReader(conn)
		var head strings.Builder
		for {
			l, err := br.ReadString('\n')
			if err != nil {
				t.Fatalf("reading the 101: %v (so far %q)", err, head.String())
			}
			head.WriteString(l)
			if l == "\r\n" {
				return head.String()
			}
		}
	}
	held, netHTTP := raw(nil), raw(unwrapBelow)
	if !strings.HasPrefix(held, "HTTP/1.1 101 ") || strings.Contains(held, "\r\nInjected") {
		t.Fatalf("101 written by Hijack:\n%s", held)
	}
	if held != netHTTP {
		t.Errorf("101 written by Hijack:\n%s\nnet/http's:\n%s", held, netHTTP)
	}
}

// TestForeignUpgradesPassThrough: a route behind the middleware that
// upgrades without chiws.Accept works as it would without the middleware:
// coder/websocket's own Accept, a reverse proxy to a WebSocket backend, and
// a second chiws mounted in a route group. The origin policy and the limit
// still apply first (a foreign socket counts against MaxConnections while
// its handler runs); Shutdown neither closes nor waits for it, as net/http's
// does not for hijacked connections; it is logged at Debug as passed
// through. (gorilla/websocket's Upgrader: e2e/interop_test.go.)
func TestForeignUpgradesPassThrough(t *testing.T) {
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		defer c.CloseNow()
		coderEcho(c)
	}))
	t.Cleanup(backend.Close)
	target, err := url.Parse(backend.URL)
	if err != nil {
		t.Fatal(err)
	}
	inner := chiws.New(chiws.Options{})
	t.Cleanup(func() { inner.Shutdown(context.Background()) })
	tests := []struct {
		name  string
		route func(r chi.Router)
	}{
		{"coder/websocket Accept", func(r chi.Router) {
			r.Get("/ws", func(w http.ResponseWriter, r *http.Request) {
				c, err := websocket.Accept(w, r, nil)
				if err != nil {
					return
				}
				defer c.CloseNow()
				coderEcho(c)
			})
		}},
		{"httputil.ReverseProxy", func(r chi.Router) {
			r.Handle("/ws", httputil.NewSingleHostReverseProxy(target))
		}},
		{"a second chiws in a group", func(r chi.Router) {
			r.Group(func(r chi.Router) {
				r.Use(inner.Handler)
				r.Get("/ws", echo)
			})
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ws, srv, logs := relServer(t, chiws.Options{MaxConnections: 1}, nil, tt.route)
			if code := dialStatus(t, wsURL(srv, "/ws"), &websocket.DialOptions{
				HTTPHeader: http.Header{"Origin": {"https://evil.example"}},
			}); code != http.StatusForbidden {
				t.Fatalf("cross-origin dial: %d, want 403 before the route", code)
			}
			c := dial(t, wsURL(srv, "/ws"), nil)
			ctx := testCtx(t)
			roundTrip := func(msg string) {
				t.Helper()
				if err := c.Write(ctx, websocket.MessageText, []byte(msg)); err != nil {
					t.Fatal(err)
				}
				if _, p, err := c.Read(ctx); err != nil || string(p) != msg {
					t.Fatalf("echo %q: %q %v", msg, p, err)
				}
			}
			roundTrip("through")
			if code := dialStatus(t, wsURL(srv, "/ws"), nil); code != http.StatusServiceUnavailable {
				t.Fatalf("second socket over MaxConnections 1: %d, want 503", code)
			}
			shutCtx, cancel := context.WithTimeout(ctx, 2*time.Second)
			defer cancel()
			if err := ws.Shutdown(shutCtx); err != nil {
				t.Fatalf("Shutdown waited for a foreign socket: %v", err)
			}
			roundTrip("after Shutdown") // not the outer middleware's to close
			if err := c.Close(websocket.StatusNormalClosure, ""); err != nil {
				t.Fatal(err)
			}
			waitFor(t, "passed-through log", func() bool {
				return logs.FilterMessageSnippet("passed through").FilterLevelExact(zap.DebugLevel).Len() == 1
			})
		})
	}
}

// coderEcho echoes until an error, with coder/websocket alone.
func coderEcho(c *websocket.Conn) {
	ctx := context.Background()
	for {
		typ, p, err := c.Read(ctx)
		if err != nil || c.Write(ctx, typ, p) != nil {
			return
		}
	}
}
