package brokersnippets

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/chiws/chiws"
	"github.com/chiws/chiws/broadcast/natsbroker"
	"github.com/coder/websocket"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestEmbeddedHub runs the embedded NATS example on loopback, with a
// cluster port the kernel picks instead of fleet's addresses: a member
// receives what is published, and the shutdown function sends it 1001.
func TestEmbeddedHub(t *testing.T) {
	if fleet.ClusterAddr == "" || len(fleet.Routes) == 0 {
		t.Fatalf("fleet = %+v: the guide's example lost its addresses", fleet)
	}
	hub, shutdown, err := newEmbeddedHub(natsbroker.EmbeddedOptions{ClusterAddr: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	ws := chiws.New(chiws.Options{})
	joined := make(chan struct{}, 1)
	srv := httptest.NewServer(ws.Handler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := chiws.Accept(w, r, nil)
		if err != nil {
			return
		}
		if _, err := hub.Join(c, "room.42"); err != nil {
			c.Close(websocket.StatusTryAgainLater, "try again later")
			return
		}
		joined <- struct{}{}
		c.CloseRead(c.Context())
		_ = c.Wait(context.Background())
	})))
	defer srv.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(srv.URL, "http"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseNow()
	<-joined
	if err := hub.Publish(ctx, "room.42", websocket.MessageText, []byte("hi")); err != nil {
		t.Fatal(err)
	}
	if _, p, err := c.Read(ctx); err != nil || string(p) != "hi" {
		t.Fatalf("read %q %v, want hi", p, err)
	}
	closed := make(chan error, 1)
	go func() { // ends with the close handshake, which it answers
		_, _, err := c.Read(ctx)
		closed <- err
	}()
	if err := shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-closed; websocket.CloseStatus(err) != websocket.StatusGoingAway {
		t.Errorf("after shutdown: %v, want 1001", err)
	}
	if err := ws.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestRedisBrokers builds both Redis brokers of the guide without a Redis
// (a listener that hangs up at once, so that go-redis's pool does not
// start probing in the background): a broker needs none to start, says it
// is down, and closing it and its client leaves nothing running.
func TestRedisBrokers(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hungUp := make(chan struct{})
	go func() { // owned by the test: ends when ln closes, waited for below
		defer close(hungUp)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	defer func() { ln.Close(); <-hungUp }()
	addr := ln.Addr().String()
	b, client, err := newRedis("redis://" + addr)
	if err != nil {
		t.Fatal(err)
	}
	if b.Health().Up {
		t.Error("a broker without a server says it is up")
	}
	if err := b.Close(); err != nil {
		t.Error(err)
	}
	client.Close()

	b, client, err = newRedisCluster("redis://" + addr)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Close(); err != nil {
		t.Error(err)
	}
	client.Close()
}

// TestNATSNeedsAServer: the operated-cluster example fails at once, with
// ErrBrokerUnavailable, when its servers cannot be reached. (The names
// nats-1 and nats-2 do not resolve here.)
func TestNATSNeedsAServer(t *testing.T) {
	if b, err := newNATS(); err == nil {
		b.Close()
		t.Skip("nats-1 or nats-2 answered: this machine runs NATS under those names")
	}
}
