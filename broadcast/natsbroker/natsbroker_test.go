package natsbroker_test

import (
	"context"
	"crypto/tls"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/chiws/chiws/broadcast"
	"github.com/chiws/chiws/broadcast/internal/fleettest"
	"github.com/chiws/chiws/broadcast/natsbroker"
	"github.com/nats-io/nats.go"
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
	waitRoutes(t, 2, servers...)
	return nodes
}

func TestHubOnEmbeddedCluster(t *testing.T) {
	fleettest.Run(t, cluster)
}

// TestServerRestart: the hubs' NATS server (an operated one, reached over
// loopback) stops and comes back on the same port; the hubs learn both
// edges through Health (the connection part).
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
	cert := tls.Certificate{Certificate: [][]byte{{0}}}
	tests := []struct {
		name string
		give natsbroker.EmbeddedOptions
	}{
		{"routes without cluster", natsbroker.EmbeddedOptions{Routes: []string{"nats://127.0.0.1:1"}}},
		{"bad route", natsbroker.EmbeddedOptions{ClusterAddr: "127.0.0.1:0", Routes: []string{"http://x"}}},
		{"bad cluster addr", natsbroker.EmbeddedOptions{ClusterAddr: "nohostport"}},
		{"bad client port", natsbroker.EmbeddedOptions{ClientAddr: "127.0.0.1:99999"}},
		{"route ping without cluster", natsbroker.EmbeddedOptions{RoutePingInterval: time.Second}},
		{"route TLS without cluster", natsbroker.EmbeddedOptions{RouteTLS: &tls.Config{Certificates: []tls.Certificate{cert}}}},
		{"negative route ping", natsbroker.EmbeddedOptions{ClusterAddr: "127.0.0.1:0", RoutePingInterval: -time.Second}},
		{"negative route pings out", natsbroker.EmbeddedOptions{ClusterAddr: "127.0.0.1:0", RouteMaxPingsOut: -1}},
		{"route user without password", natsbroker.EmbeddedOptions{ClusterAddr: "127.0.0.1:0", RouteUser: "u"}},
		{"route password without user", natsbroker.EmbeddedOptions{ClusterAddr: "127.0.0.1:0", RoutePassword: "p"}},
		{"route TLS without certificate", natsbroker.EmbeddedOptions{ClusterAddr: "127.0.0.1:0", RouteTLS: &tls.Config{}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if e, err := natsbroker.StartEmbedded(tt.give); err == nil {
				e.Shutdown()
				t.Fatal("StartEmbedded succeeded")
			} else {
				t.Log(err)
			}
		})
	}
	if _, err := natsbroker.Connect("nats://127.0.0.1:1", natsbroker.Options{}); !errors.Is(err, broadcast.ErrBrokerUnavailable) {
		t.Errorf("Connect to a closed port = %v, want ErrBrokerUnavailable", err)
	}
	badOpts := []struct {
		name string
		give natsbroker.Options
	}{
		{"prefix without a trailing dot", natsbroker.Options{SubjectPrefix: "app"}},
		{"prefix in the control namespace", natsbroker.Options{SubjectPrefix: natsbroker.ControlPrefix + "app."}},
		{"name with a space", natsbroker.Options{Name: "web 2"}},
		{"name too long", natsbroker.Options{Name: string(make([]byte, natsbroker.MaxNameLen+1))}},
		{"negative interval", natsbroker.Options{HealthInterval: -time.Second}},
		{"negative timeout", natsbroker.Options{HealthTimeout: -time.Second}},
		{"negative forget", natsbroker.Options{ForgetAfter: -time.Second}},
		{"timeout under two intervals", natsbroker.Options{HealthInterval: time.Second, HealthTimeout: 1500 * time.Millisecond}},
		{"forget within the timeout", natsbroker.Options{HealthTimeout: 10 * time.Second, ForgetAfter: 10 * time.Second}},
		{"no echo", natsbroker.Options{NATS: []nats.Option{nats.NoEcho()}}},
	}
	for _, tt := range badOpts {
		t.Run(tt.name, func(t *testing.T) {
			if b, err := e.Connect(tt.give); err == nil {
				_ = b.Close()
				t.Fatal("Connect succeeded")
			} else {
				t.Log(err)
			}
		})
	}
}
