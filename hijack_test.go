package chiws_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
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
// handler. When net/http writes the 101, the upgrade runs deep enough to
// double the handler goroutine's stack, which the runtime then keeps for
// the socket's life. Each candidate is measured in a process of its own:
// the runtime reuses the stacks of ended goroutines.
func TestIdleSocketStack(t *testing.T) {
	if c := os.Getenv(stackCandidateEnv); c != "" {
		fmt.Printf("STACK %s %.0f\n", c, idleStack(t, c))
		return
	}
	per := map[string]float64{}
	for _, c := range []string{"coder", "chiws"} {
		cmd := exec.Command(os.Args[0], "-test.run=^TestIdleSocketStack$", "-test.count=1")
		cmd.Env = append(os.Environ(), stackCandidateEnv+"="+c)
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
	t.Logf("stack per idle socket: coder/websocket alone %.0f B, under chi and chiws %.0f B", per["coder"], per["chiws"])
	if per["chiws"] > per["coder"]+1024 {
		t.Errorf("an idle socket under chi and chiws keeps %.0f B of stack, coder/websocket alone %.0f B", per["chiws"], per["coder"])
	}
}

// stackCandidateEnv names the candidate a child process of
// TestIdleSocketStack measures.
const stackCandidateEnv = "CHIWS_TEST_STACK_CANDIDATE"

// idleStack returns the stack in use per socket while n sockets of the
// candidate wait in Read.
func idleStack(t *testing.T, candidate string) float64 {
	const n = 200
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
	if candidate == "chiws" {
		ws := chiws.New(chiws.Options{})
		router := chi.NewRouter()
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
