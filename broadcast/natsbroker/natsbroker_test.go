package natsbroker_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/chiws/chiws/broadcast"
	"github.com/chiws/chiws/broadcast/internal/fleettest"
	"github.com/chiws/chiws/broadcast/natsbroker"
)

// cluster starts three embedded servers joined by routes, each with its
// broker connected in-process, as three instances of the example run with
// -nats-cluster and -nats-routes.
func cluster(t *testing.T) []fleettest.Node {
	t.Helper()
	var nodes []fleettest.Node
	var seed string
	var servers []*natsbroker.Embedded
	for i := range 3 {
		o := natsbroker.EmbeddedOptions{ClusterAddr: "127.0.0.1:0"}
		if i > 0 {
			o.Routes = []string{seed}
		}
		e, err := natsbroker.StartEmbedded(o)
		if err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			seed = e.ClusterURL()
		}
		servers = append(servers, e)
		b, err := e.Connect(natsbroker.Options{})
		if err != nil {
			e.Shutdown()
			t.Fatal(err)
		}
		var once sync.Once
		stop := func() {
			once.Do(func() {
				_ = b.Close()
				e.Shutdown()
			})
		}
		t.Cleanup(stop)
		nodes = append(nodes, fleettest.Node{Broker: b, Stop: stop})
	}
	// Wait for the full mesh: every server routes to the two others.
	deadline := time.Now().Add(fleettest.Timeout)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for _, e := range servers {
		for e.Server().NumRoutes() < 2 {
			if time.Now().After(deadline) {
				t.Fatalf("cluster not formed: %d routes", e.Server().NumRoutes())
			}
			<-tick.C
		}
	}
	return nodes
}

func TestHubOnEmbeddedCluster(t *testing.T) {
	fleettest.Run(t, cluster)
}

// TestServerRestart: the hubs' NATS server (an operated one, reached over
// loopback) stops and comes back on the same port.
func TestServerRestart(t *testing.T) {
	start := func(addr string) *natsbroker.Embedded {
		e, err := natsbroker.StartEmbedded(natsbroker.EmbeddedOptions{ClientAddr: addr})
		if err != nil {
			t.Fatal(err)
		}
		return e
	}
	e := start("127.0.0.1:0")
	addr := e.Server().Addr().String()
	url := e.ClientURL()
	var mu sync.Mutex
	t.Cleanup(func() {
		mu.Lock()
		defer mu.Unlock()
		e.Shutdown()
	})
	var nodes []fleettest.Node
	for range 3 {
		b, err := natsbroker.Connect(url, natsbroker.Options{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = b.Close() })
		nodes = append(nodes, fleettest.Node{Broker: b})
	}
	fleettest.RunOutage(t, nodes, func(t *testing.T) func() {
		mu.Lock()
		defer mu.Unlock()
		e.Shutdown()
		return func() {
			mu.Lock()
			defer mu.Unlock()
			e = start(addr)
		}
	})
}

func TestBadInput(t *testing.T) {
	e, err := natsbroker.StartEmbedded(natsbroker.EmbeddedOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Shutdown()
	b, err := e.Connect(natsbroker.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	ctx := context.Background()
	// A context without a deadline is fine (nats.go's flush needs one).
	sub, err := b.Subscribe(ctx, "ok", func([]byte) {})
	if err != nil {
		t.Fatalf("Subscribe without a deadline: %v", err)
	}
	_ = sub.Unsubscribe()
	if err := b.Publish(ctx, "a.>", nil); !errors.Is(err, broadcast.ErrInvalidTopic) {
		t.Errorf("Publish(a.>) = %v, want ErrInvalidTopic", err)
	}
	if _, err := b.Subscribe(ctx, "a b", func([]byte) {}); !errors.Is(err, broadcast.ErrInvalidTopic) {
		t.Errorf("Subscribe(a b) = %v, want ErrInvalidTopic", err)
	}
	if err := b.Publish(ctx, "big", make([]byte, 2<<20)); err == nil {
		t.Errorf("Publish of 2 MiB succeeded over a 1 MiB max_payload")
	}
	tests := []struct {
		name string
		give natsbroker.EmbeddedOptions
	}{
		{"routes without cluster", natsbroker.EmbeddedOptions{Routes: []string{"nats://127.0.0.1:1"}}},
		{"bad route", natsbroker.EmbeddedOptions{ClusterAddr: "127.0.0.1:0", Routes: []string{"http://x"}}},
		{"bad cluster addr", natsbroker.EmbeddedOptions{ClusterAddr: "nohostport"}},
		{"bad client port", natsbroker.EmbeddedOptions{ClientAddr: "127.0.0.1:99999"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if e, err := natsbroker.StartEmbedded(tt.give); err == nil {
				e.Shutdown()
				t.Fatal("StartEmbedded succeeded")
			}
		})
	}
	if _, err := natsbroker.Connect("nats://127.0.0.1:1", natsbroker.Options{}); !errors.Is(err, broadcast.ErrBrokerUnavailable) {
		t.Errorf("Connect to a closed port = %v, want ErrBrokerUnavailable", err)
	}
	if _, err := natsbroker.Connect("", natsbroker.Options{SubjectPrefix: "app"}); err == nil {
		t.Errorf("Connect accepted a prefix without a trailing dot")
	}
}
