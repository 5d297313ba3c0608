package broadcast_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/chiws/chiws"
	"github.com/chiws/chiws/broadcast"
	"github.com/chiws/chiws/broadcast/internal/fleettest"
	"github.com/chiws/chiws/internal/wstest"
	"github.com/coder/websocket"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

// room serves a hub on the Memory broker whose handler joins with
// join, then reads until the socket closes. It returns the hub and a
// dial function; the cleanup stops the server, the middleware, then the
// hub, the documented order.
func room(t *testing.T, opts broadcast.Options, logger *zap.Logger, join func(*broadcast.Hub, *chiws.Conn, *http.Request) (*broadcast.Member, error)) (*broadcast.Hub, func(query string) *websocket.Conn, chan *broadcast.Member) {
	t.Helper()
	b := broadcast.NewMemory()
	hub := broadcast.NewHub(b, opts)
	ws := chiws.New(chiws.Options{Logger: logger})
	joined := make(chan *broadcast.Member, 16)
	srv := httptest.NewServer(ws.Handler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := chiws.Accept(w, r, nil)
		if err != nil {
			return
		}
		m, err := join(hub, c, r)
		if err != nil {
			_ = c.Close(websocket.StatusInternalError, err.Error())
			return
		}
		joined <- m
		for {
			if _, _, err := c.Read(c.Context()); err != nil {
				return
			}
		}
	})))
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), fleettest.Timeout)
		defer cancel()
		srv.CloseClientConnections()
		srv.Close()
		_ = ws.Shutdown(ctx)
		_ = hub.Shutdown(ctx)
		_ = b.Close()
	})
	dial := func(query string) *websocket.Conn {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), fleettest.Timeout)
		defer cancel()
		c, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(srv.URL, "http")+"/?"+query, nil)
		if err != nil {
			t.Fatal(err)
		}
		c.SetReadLimit(1 << 20)
		t.Cleanup(func() { _ = c.CloseNow() })
		return c
	}
	return hub, dial, joined
}

func read(t *testing.T, c *websocket.Conn) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), fleettest.Timeout)
	defer cancel()
	_, p, err := c.Read(ctx)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	return string(p)
}

func publish(t *testing.T, hub *broadcast.Hub, topic string, msgs ...string) {
	t.Helper()
	for _, msg := range msgs {
		if err := hub.Publish(context.Background(), topic, websocket.MessageText, []byte(msg)); err != nil {
			t.Fatal(err)
		}
	}
}

func joinRoom(h *broadcast.Hub, c *chiws.Conn, _ *http.Request) (*broadcast.Member, error) {
	return h.Join(c, "room")
}

func joinPaused(h *broadcast.Hub, c *chiws.Conn, _ *http.Request) (*broadcast.Member, error) {
	return h.JoinWith(c, broadcast.JoinOptions{Paused: true}, "room")
}

// TestSendIsOrderedWithBroadcasts: Member.Send goes through the member's
// queue, so a message sent between two broadcasts arrives between them.
// (The Memory broker queues a message before Publish returns.)
func TestSendIsOrderedWithBroadcasts(t *testing.T) {
	hub, dial, joined := room(t, broadcast.Options{}, nil, joinRoom)
	c := dial("")
	m := <-joined
	var want []string
	for i := range 100 {
		publish(t, hub, "room", fmt.Sprintf("b%d", i))
		if err := m.Send(websocket.MessageText, []byte(fmt.Sprintf("s%d", i))); err != nil {
			t.Fatal(err)
		}
		want = append(want, fmt.Sprintf("b%d", i), fmt.Sprintf("s%d", i))
	}
	for _, w := range want {
		if got := read(t, c); got != w {
			t.Fatalf("got %q, want %q", got, w)
		}
	}
}

// TestPausedJoinSendsTheSnapshotFirst: a paused member gets what Send
// queued first, then what its topics queued meanwhile, then the rest.
func TestPausedJoinSendsTheSnapshotFirst(t *testing.T) {
	hub, dial, joined := room(t, broadcast.Options{}, nil, joinPaused)
	c := dial("")
	m := <-joined
	publish(t, hub, "room", "live1", "live2")
	for _, s := range []string{"snapshot1", "snapshot2"} {
		if err := m.Send(websocket.MessageText, []byte(s)); err != nil {
			t.Fatal(err)
		}
	}
	m.Resume()
	m.Resume() // a no-op
	publish(t, hub, "room", "live3")
	for _, w := range []string{"snapshot1", "snapshot2", "live1", "live2", "live3"} {
		if got := read(t, c); got != w {
			t.Fatalf("got %q, want %q", got, w)
		}
	}
}

// TestSendOverTheBound: Send over the queue's bounds closes the member
// with 1008, as a broadcast would, and says so.
func TestSendOverTheBound(t *testing.T) {
	hub, dial, joined := room(t, broadcast.Options{QueueMessages: 2}, nil, joinPaused)
	c := dial("")
	m := <-joined
	publish(t, hub, "room", "live1", "live2") // held: the member is paused
	if err := m.Send(websocket.MessageText, []byte("snapshot")); !errors.Is(err, broadcast.ErrTooSlow) {
		t.Fatalf("Send over the bound = %v, want ErrTooSlow", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), fleettest.Timeout)
	defer cancel()
	_, _, err := c.Read(ctx)
	if code := websocket.CloseStatus(err); code != websocket.StatusPolicyViolation {
		t.Fatalf("read %v, want 1008", err)
	}
	<-m.Conn().Done()
	if err := m.Send(websocket.MessageText, []byte("x")); !errors.Is(err, broadcast.ErrMemberLeft) {
		t.Fatalf("Send after the close = %v, want ErrMemberLeft", err)
	}
	if err := m.Send(websocket.MessageType(9), nil); !errors.Is(err, broadcast.ErrInvalidMessage) {
		t.Fatalf("Send of type 9 = %v, want ErrInvalidMessage", err)
	}
	if st := hub.Stats(); st.Slow != 1 {
		t.Fatalf("Slow = %d, want 1", st.Slow)
	}
}

// TestJoinIdentity: a member's ID and Meta are bounded, the ID names the
// member in the socket's close log, and keys are unique.
func TestJoinIdentity(t *testing.T) {
	core, logs := observer.New(zap.DebugLevel)
	_, dial, joined := room(t, broadcast.Options{}, zap.New(core), func(h *broadcast.Hub, c *chiws.Conn, r *http.Request) (*broadcast.Member, error) {
		return h.JoinWith(c, broadcast.JoinOptions{ID: r.URL.Query().Get("id"), Meta: []byte("admin")}, "room")
	})
	alice := dial("id=alice")
	a := <-joined
	_ = dial("id=alice") // a second tab: same ID, another key
	a2 := <-joined
	if a.ID() != "alice" || string(a.Meta()) != "admin" || a.Key() == "" || a.Key() == a2.Key() {
		t.Fatalf("ID %q, Meta %q, keys %q and %q", a.ID(), a.Meta(), a.Key(), a2.Key())
	}
	_ = alice.Close(websocket.StatusNormalClosure, "")
	<-a.Conn().Done()
	wstest.WaitFor(t, fleettest.Timeout, "the close log", func() bool {
		for _, e := range logs.FilterMessage("websocket closed").All() {
			if e.ContextMap()["member"] == "alice" {
				return true
			}
		}
		return false
	})

	hub := broadcast.NewHub(broadcast.NewMemory(), broadcast.Options{})
	defer func() { _ = hub.Shutdown(context.Background()) }()
	for _, o := range []broadcast.JoinOptions{
		{ID: strings.Repeat("u", broadcast.MaxIDLen+1)},
		{ID: "\xff"},
		{Meta: make([]byte, broadcast.MaxMetaLen+1)},
	} {
		if _, err := hub.JoinWith(&chiws.Conn{}, o); err == nil {
			t.Errorf("JoinWith(ID of %d bytes, Meta of %d) did not fail", len(o.ID), len(o.Meta))
		}
	}
}

// TestSendAfterTheClientLeft: once the client closed its socket, Send
// says the member has left, and nothing is queued for nobody.
func TestSendAfterTheClientLeft(t *testing.T) {
	hub, dial, joined := room(t, broadcast.Options{}, nil, joinRoom)
	c := dial("")
	m := <-joined
	_ = c.Close(websocket.StatusNormalClosure, "bye")
	<-m.Conn().Done()
	wstest.WaitFor(t, fleettest.Timeout, "the member to leave", func() bool { return hub.Len("room") == 0 })
	if err := m.Send(websocket.MessageText, []byte("anyone?")); !errors.Is(err, broadcast.ErrMemberLeft) {
		t.Fatalf("Send after the client closed = %v, want ErrMemberLeft", err)
	}
	if st := hub.Stats(); st.Slow != 0 {
		t.Fatalf("Slow = %d, want 0", st.Slow)
	}
}

// TestSendTooBig: a message over MaxMessageBytes is refused and the
// member stays, healthy.
func TestSendTooBig(t *testing.T) {
	hub, dial, joined := room(t, broadcast.Options{MaxMessageBytes: 1024}, nil, joinRoom)
	c := dial("")
	m := <-joined
	if err := m.Send(websocket.MessageBinary, make([]byte, 2048)); !errors.Is(err, broadcast.ErrMessageTooBig) {
		t.Fatalf("Send of 2 KiB = %v, want ErrMessageTooBig", err)
	}
	if err := m.Send(websocket.MessageText, []byte("small")); err != nil {
		t.Fatal(err)
	}
	if got := read(t, c); got != "small" {
		t.Fatalf("got %q", got)
	}
	if st := hub.Stats(); st.Slow != 0 {
		t.Fatalf("Slow = %d, want 0", st.Slow)
	}
}

// TestWriteTimeout: a member whose client stopped reading, with a queue
// large enough to hold everything published, is aborted once a write
// takes longer than WriteTimeout (the socket buffers are full), without
// a close handshake its peer would not read.
func TestWriteTimeout(t *testing.T) {
	opts := broadcast.Options{
		WriteTimeout:  200 * time.Millisecond,
		QueueMessages: 2048,
		QueueBytes:    256 << 20,
	}
	hub, dial, joined := room(t, opts, nil, joinRoom)
	_ = dial("") // never reads
	m := <-joined
	pad := make([]byte, 64<<10)
	for range 1024 { // 64 MiB: more than the socket buffers hold
		if err := hub.Publish(context.Background(), "room", websocket.MessageBinary, pad); err != nil {
			t.Fatal(err)
		}
		if m.Conn().Context().Err() != nil {
			break
		}
	}
	select {
	case <-m.Conn().Done():
	case <-time.After(fleettest.Timeout):
		t.Fatal("the member's socket is still open after its write timed out")
	}
	cause := context.Cause(m.Conn().Context())
	if !errors.Is(cause, broadcast.ErrWriteTimeout) || !errors.Is(cause, chiws.ErrClosedByServer) || websocket.CloseStatus(cause) != -1 {
		t.Fatalf("cause %v, want ErrWriteTimeout and ErrClosedByServer without a close frame (1006)", cause)
	}
	wstest.WaitFor(t, fleettest.Timeout, "the member to leave", func() bool { return hub.Len("room") == 0 })
	if st := hub.Stats(); st.Slow != 0 || st.WriteTimeouts != 1 {
		t.Fatalf("Slow = %d, WriteTimeouts = %d; want 0 and 1: the write timed out, the queue never overflowed", st.Slow, st.WriteTimeouts)
	}
}

// TestAuthorize: Authorize refuses a topic at Join and at Subscribe, with
// ErrForbidden, counted; Reauthorize with a member's refreshed identity
// leaves the topics it may no longer read, at once, and tells OnRevoked.
func TestAuthorize(t *testing.T) {
	type revocation struct {
		m     *broadcast.Member
		topic string
	}
	revoked := make(chan revocation, 4)
	opts := broadcast.Options{
		Authorize: func(m *broadcast.Member, topic string) error {
			if topic == "admin" && string(m.Meta()) != "admin" {
				return errors.New("admins only")
			}
			return nil
		},
		OnRevoked: func(m *broadcast.Member, topic string, err error) { revoked <- revocation{m, topic} },
	}
	hub, dial, joined := room(t, opts, nil, func(h *broadcast.Hub, c *chiws.Conn, r *http.Request) (*broadcast.Member, error) {
		q := r.URL.Query()
		return h.JoinWith(c, broadcast.JoinOptions{ID: q.Get("id"), Meta: []byte(q.Get("role"))}, strings.Split(q.Get("topics"), ",")...)
	})

	// A user may not join admin: the handler closes with the error.
	c := dial("id=bob&role=user&topics=room,admin")
	ctx, cancel := context.WithTimeout(context.Background(), fleettest.Timeout)
	defer cancel()
	if _, _, err := c.Read(ctx); websocket.CloseStatus(err) != websocket.StatusInternalError || !strings.Contains(err.Error(), "topic forbidden") {
		t.Fatalf("bob's join: %v, want the handler's 1011 with the refusal", err)
	}

	admin := dial("id=alice&role=admin&topics=room,admin")
	alice := <-joined
	if err := alice.Subscribe("admin"); err != nil {
		t.Fatal(err) // already there, and allowed
	}
	publish(t, hub, "admin", "for admins")
	if got := read(t, admin); got != "for admins" {
		t.Fatalf("got %q", got)
	}

	// Alice's refreshed credentials say she is a user now.
	left, err := alice.Reauthorize([]byte("user"))
	if err != nil || len(left) != 1 || left[0] != "admin" {
		t.Fatalf("Reauthorize = %v, %v; want [admin]", left, err)
	}
	if r := <-revoked; r.m != alice || r.topic != "admin" {
		t.Fatalf("OnRevoked(%v, %q)", r.m, r.topic)
	}
	if n := hub.Len("admin"); n != 0 {
		t.Fatalf("Len(admin) = %d after the revocation", n)
	}
	publish(t, hub, "admin", "secret")
	publish(t, hub, "room", "for everyone")
	if got := read(t, admin); got != "for everyone" {
		t.Fatalf("got %q, want only the room's message after the revocation", got)
	}
	err = alice.Subscribe("admin")
	var fe *broadcast.ForbiddenError
	if !errors.Is(err, broadcast.ErrForbidden) || !errors.As(err, &fe) || fe.Topic != "admin" || fe.Err.Error() != "admins only" {
		t.Fatalf("Subscribe(admin) after the revocation = %v, want a ForbiddenError for admin", err)
	}
	if _, err := alice.Reauthorize(make([]byte, broadcast.MaxMetaLen+1)); err == nil {
		t.Fatal("Reauthorize with an oversized Meta did not fail")
	}
	if st := hub.Stats(); st.Forbidden != 2 || st.Revoked != 1 {
		t.Fatalf("Forbidden %d, Revoked %d; want 2 (bob's join, alice's Subscribe) and 1", st.Forbidden, st.Revoked)
	}
}
