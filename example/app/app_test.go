package app

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chiws/chiws/broadcast"
	"github.com/chiws/chiws/internal/wstest"
	"github.com/coder/websocket"
	gorilla "github.com/gorilla/websocket"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// testTimeout bounds every step; generous for a loaded 2-core machine.
const testTimeout = 30 * time.Second

// serve starts the app on a loopback port. Cleanup shuts the app down
// (closing sockets with 1001) and then the server.
func serve(t *testing.T, cfg Config) (*App, *httptest.Server) {
	t.Helper()
	a, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	srv := httptest.NewServer(a.Handler)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
		defer cancel()
		if err := a.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		srv.Close()
	})
	return a, srv
}

func wsURL(srv *httptest.Server, path string) string {
	return "ws" + strings.TrimPrefix(srv.URL, "http") + path
}

func dial(t *testing.T, srv *httptest.Server, path string) *websocket.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	c, _, err := websocket.Dial(ctx, wsURL(srv, path), nil)
	if err != nil {
		t.Fatalf("dial %s: %v", path, err)
	}
	t.Cleanup(func() { _ = c.CloseNow() })
	return c
}

func write(t *testing.T, c *websocket.Conn, typ websocket.MessageType, p []byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	if err := c.Write(ctx, typ, p); err != nil {
		t.Fatalf("write: %v", err)
	}
}

func read(t *testing.T, c *websocket.Conn) (websocket.MessageType, []byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	typ, p, err := c.Read(ctx)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	return typ, p
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	wstest.WaitFor(t, testTimeout, what, cond)
}

func TestEcho(t *testing.T) {
	_, srv := serve(t, Config{})
	c := dial(t, srv, "/ws")
	tests := []struct {
		name string
		typ  websocket.MessageType
		give []byte
	}{
		{"text", websocket.MessageText, []byte("Hello, WebSocket")},
		{"empty text", websocket.MessageText, []byte{}},
		{"binary", websocket.MessageBinary, []byte{0, 1, 2, 0xfe, 0xff}},
		{"large text", websocket.MessageText, bytes.Repeat([]byte("x"), 30<<10)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			write(t, c, tt.typ, tt.give)
			typ, got := read(t, c)
			if typ != tt.typ {
				t.Errorf("type = %v, want %v", typ, tt.typ)
			}
			if !bytes.Equal(got, tt.give) {
				t.Errorf("echo = %q, want %q", clipped(got), clipped(tt.give))
			}
		})
	}
	if err := c.Close(websocket.StatusNormalClosure, ""); err != nil {
		t.Errorf("close: %v", err)
	}
}

func clipped(p []byte) string {
	if len(p) > 40 {
		return string(p[:40]) + "..."
	}
	return string(p)
}

// TestEchoCloseCode checks the sample's close behaviour: the server
// answers the client's close frame with the client's code and reason.
// gorilla is used as the client because it exposes the frame it receives.
func TestEchoCloseCode(t *testing.T) {
	_, srv := serve(t, Config{})
	tests := []struct {
		code   int
		reason string
	}{
		{gorilla.CloseNormalClosure, "bye"},
		{gorilla.CloseGoingAway, "tab closed"},
		{4001, "application code"},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprint(tt.code), func(t *testing.T) {
			c, _, err := gorilla.DefaultDialer.Dial(wsURL(srv, "/ws"), nil)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			_ = c.SetReadDeadline(time.Now().Add(testTimeout))
			// Let the default close handler not answer: we only look at the
			// frame the server sends.
			got := make(chan *gorilla.CloseError, 1)
			c.SetCloseHandler(func(code int, text string) error {
				got <- &gorilla.CloseError{Code: code, Text: text}
				return nil
			})
			msg := gorilla.FormatCloseMessage(tt.code, tt.reason)
			if err := c.WriteControl(gorilla.CloseMessage, msg, time.Now().Add(testTimeout)); err != nil {
				t.Fatal(err)
			}
			_, _, err = c.ReadMessage()
			var ce *gorilla.CloseError
			if !errors.As(err, &ce) {
				t.Fatalf("read after close = %v, want a close frame", err)
			}
			if ce.Code != tt.code || ce.Text != tt.reason {
				t.Errorf("server closed with %d %q, want %d %q", ce.Code, ce.Text, tt.code, tt.reason)
			}
			<-got
		})
	}
}

func TestNotWebSocket(t *testing.T) {
	_, srv := serve(t, Config{})
	tests := []struct {
		path string
		want int
	}{
		{"/ws", http.StatusBadRequest},
		{"/broadcast", http.StatusBadRequest},
		{"/", http.StatusOK},
		{"/app.js", http.StatusOK},
		{"/app.css", http.StatusOK},
		{"/missing", http.StatusNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.path, func(t *testing.T) {
			resp, err := http.Get(srv.URL + tt.path)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tt.want {
				t.Errorf("GET %s = %d, want %d", tt.path, resp.StatusCode, tt.want)
			}
			if tt.path == "/" {
				for _, id := range []string{"url", "connect", "message", "send", "close", "status", "log"} {
					if !bytes.Contains(body, []byte(`id="`+id+`"`)) {
						t.Errorf("page lacks #%s", id)
					}
				}
			}
		})
	}
}

func TestForeignOriginRefused(t *testing.T) {
	a, srv := serve(t, Config{AllowedOrigins: []string{"https://allowed.example"}})
	tests := []struct {
		origin string
		want   int
	}{
		{"https://allowed.example", http.StatusSwitchingProtocols},
		{"https://evil.example", http.StatusForbidden},
	}
	for _, tt := range tests {
		t.Run(tt.origin, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
			defer cancel()
			h := http.Header{"Origin": {tt.origin}}
			c, resp, err := websocket.Dial(ctx, wsURL(srv, "/ws"), &websocket.DialOptions{HTTPHeader: h})
			if c != nil {
				defer c.CloseNow()
			}
			if resp == nil {
				t.Fatalf("dial: %v", err)
			}
			if resp.StatusCode != tt.want {
				t.Errorf("status = %d, want %d (err %v)", resp.StatusCode, tt.want, err)
			}
		})
	}
	if got := a.WS.Stats().RejectedOrigin; got != 1 {
		t.Errorf("RejectedOrigin = %d, want 1", got)
	}
}

// joinRoom dials /broadcast and reads the welcome, which comes first.
func joinRoom(t *testing.T, srv *httptest.Server) *websocket.Conn {
	t.Helper()
	c := dial(t, srv, "/broadcast")
	if _, got := read(t, c); !strings.HasPrefix(string(got), Welcome) {
		t.Fatalf("first message %q, want the welcome", got)
	}
	return c
}

// TestBroadcast: a member's message reaches every other member, with its
// type, and not the sender, whose next message is the other's reply.
func TestBroadcast(t *testing.T) {
	a, srv := serve(t, Config{})
	alice := joinRoom(t, srv)
	bob := joinRoom(t, srv)
	waitFor(t, "two members", func() bool { return a.Hub.Len(Room) == 2 })

	tests := []struct {
		name     string
		from, to *websocket.Conn
		typ      websocket.MessageType
		give     []byte
	}{
		{"text from alice", alice, bob, websocket.MessageText, []byte("hi bob")},
		{"binary from bob", bob, alice, websocket.MessageBinary, []byte{1, 2, 3}},
		{"text from alice again", alice, bob, websocket.MessageText, []byte("bye")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			write(t, tt.from, tt.typ, tt.give)
			// The receiver's message proves the sender got nothing in
			// between: the next test reads the sender as a receiver.
			typ, got := read(t, tt.to)
			if typ != tt.typ || !bytes.Equal(got, tt.give) {
				t.Errorf("got %v %q, want %v %q", typ, got, tt.typ, tt.give)
			}
		})
	}

	if err := bob.Close(websocket.StatusNormalClosure, "leaving"); err != nil {
		t.Errorf("bob close: %v", err)
	}
	waitFor(t, "bob to leave", func() bool { return a.Hub.Len(Room) == 1 })
	carol := joinRoom(t, srv)
	write(t, carol, websocket.MessageText, []byte("anyone?"))
	if _, got := read(t, alice); string(got) != "anyone?" {
		t.Errorf("alice got %q", got)
	}
}

// TestBroadcastSlowMember shows that a member that stops reading is dropped
// once its queue is full, and that the others keep receiving every message
// meanwhile.
func TestBroadcastSlowMember(t *testing.T) {
	a, srv := serve(t, Config{MemberQueue: 4, WriteTimeout: time.Minute})
	alice := joinRoom(t, srv)
	bob := joinRoom(t, srv)

	// The slow member never reads, and its small receive buffer makes the
	// server's writes to it block after a few megabytes.
	d := net.Dialer{}
	slowDialer := gorilla.Dialer{NetDialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := d.DialContext(ctx, network, addr)
		if tc, ok := c.(*net.TCPConn); ok {
			_ = tc.SetReadBuffer(4 << 10)
		}
		return c, err
	}}
	slow, _, err := slowDialer.Dial(wsURL(srv, "/broadcast"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Close()
	waitFor(t, "three members", func() bool { return a.Hub.Len(Room) == 3 })

	// Alice sends paced messages: each waits until bob has it, so his
	// queue never holds more than one, while the slow member's queue grows
	// once the kernel buffers are full.
	msg := bytes.Repeat([]byte("m"), 16<<10)
	const max = 2000 // 32 MiB: far more than any loopback buffer
	sent := 0
	for ; sent < max && a.Hub.Stats().Slow == 0; sent++ {
		write(t, alice, websocket.MessageBinary, msg)
		if _, got := read(t, bob); len(got) != len(msg) {
			t.Fatalf("got %d bytes, want %d", len(got), len(msg))
		}
	}
	if a.Hub.Stats().Slow != 1 {
		t.Fatalf("slow member still in the room after %d messages", sent)
	}
	t.Logf("slow member dropped after %d messages of %d bytes", sent, len(msg))
	// The room still works for the others.
	write(t, bob, websocket.MessageText, []byte("still here"))
	if _, got := read(t, alice); string(got) != "still here" {
		t.Errorf("got %q", got)
	}
}

// TestShutdown checks App.Shutdown: every socket, echo and broadcast,
// receives 1001 Going Away, the hub's goroutines end (goleak checks them
// in TestMain) and a second call is harmless.
func TestShutdown(t *testing.T) {
	a, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(a.Handler)
	defer srv.Close()
	conns := []*websocket.Conn{
		dial(t, srv, "/ws"),
		joinRoom(t, srv),
		joinRoom(t, srv),
	}
	waitFor(t, "two members", func() bool { return a.Hub.Len(Room) == 2 })

	closed := make(chan error, len(conns))
	for _, c := range conns {
		go func() { // ends when the server closes the socket
			ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
			defer cancel()
			_, _, err := c.Read(ctx)
			closed <- err
		}()
	}
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	if err := a.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	for range conns {
		if err := <-closed; websocket.CloseStatus(err) != websocket.StatusGoingAway {
			t.Errorf("client saw %v, want close 1001", err)
		}
	}
	if n := a.Hub.Len(Room); n != 0 {
		t.Errorf("hub has %d members after Shutdown", n)
	}
	if err := a.Shutdown(ctx); err != nil {
		t.Errorf("second Shutdown: %v", err)
	}
	// New sockets are refused after Shutdown.
	_, resp, err := websocket.Dial(ctx, wsURL(srv, "/broadcast"), nil)
	if err == nil || resp == nil || resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("dial after Shutdown: resp %v, err %v; want 503", resp, err)
	}
}

func TestNewInvalidConfig(t *testing.T) {
	tests := []struct {
		name string
		give Config
	}{
		{"bad origin", Config{AllowedOrigins: []string{"not an origin"}}},
		{"negative read limit", Config{ReadLimit: -1}},
		{"negative queue", Config{MemberQueue: -1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := New(tt.give); err == nil {
				t.Error("New accepted an invalid config")
			}
		})
	}
}

// reach is a Memory broker whose Health the test sets.
type reach struct {
	broadcast.Broker
	mu     sync.Mutex
	health broadcast.Health
	notify func(broadcast.Health)
}

func (b *reach) Health() broadcast.Health {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.health
}

// PartOf: no part carries some topics only.
func (b *reach) PartOf(string) string { return "" }

func (b *reach) NotifyHealth(f func(broadcast.Health)) func() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.notify = f
	return func() {}
}

// down sets the parts down; every other part is up.
func (b *reach) down(parts ...string) {
	var hs []broadcast.PartHealth
	for _, p := range []broadcast.PartHealth{
		{Name: "connection", Kind: broadcast.PartAll},
		{Name: "peer web-2/1", Kind: broadcast.PartPeer},
		{Name: "probe", Kind: broadcast.PartAll},
	} {
		p.Up = !slices.Contains(parts, p.Name)
		hs = append(hs, p)
	}
	b.mu.Lock()
	b.health = broadcast.HealthOf(hs)
	f, h := b.notify, b.health
	b.mu.Unlock()
	f(h)
}

// TestCutOffClosesTheRoom: a lost peer closes nothing here (the room still
// works on this instance); this instance's own connection lost closes
// every member with 1013.
func TestCutOffClosesTheRoom(t *testing.T) {
	b := &reach{Broker: broadcast.NewMemory()}
	b.health = broadcast.Health{Up: true}
	a, srv := serve(t, Config{Broker: b})
	alice := joinRoom(t, srv)
	bob := joinRoom(t, srv)
	waitFor(t, "two members", func() bool { return a.Hub.Len(Room) == 2 })

	b.down("peer web-2/1")
	write(t, alice, websocket.MessageText, []byte("still here"))
	if _, got := read(t, bob); string(got) != "still here" {
		t.Fatalf("bob got %q after a peer went down", got)
	}
	b.down("peer web-2/1", "connection")
	for _, c := range []*websocket.Conn{alice, bob} {
		ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
		_, _, err := c.Read(ctx)
		cancel()
		if websocket.CloseStatus(err) != websocket.StatusTryAgainLater {
			t.Fatalf("read %v, want 1013 once the connection is down", err)
		}
	}
}
