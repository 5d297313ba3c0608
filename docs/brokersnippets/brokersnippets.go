// Package brokersnippets holds the code of docs/broadcast.md that needs the
// broker modules (natsbroker, redisbroker). It is a module of its own, as
// the brokers are, so that the library's module does not depend on NATS or
// Redis; docs/docs_test.go checks that the guide quotes it verbatim, and
// the tests here run what can run on loopback.
package brokersnippets

import (
	"context"
	"errors"

	"github.com/chiws/chiws/broadcast"
	"github.com/chiws/chiws/broadcast/natsbroker"
	"github.com/chiws/chiws/broadcast/redisbroker"
	"github.com/redis/go-redis/v9"
)

// fleet is the embedded NATS server of the instance at 10.0.0.1, in a
// fleet where another instance runs at 10.0.0.2.
var fleet = natsbroker.EmbeddedOptions{
	ClusterAddr: "10.0.0.1:6222",                  // routes from the other instances
	Routes:      []string{"nats://10.0.0.2:6222"}, // one other instance is enough
}

// newEmbeddedHub starts an embedded NATS server with opts and returns a
// hub on it, and the function that stops both: call it after the
// middleware's Shutdown, which has closed the sockets with 1001.
func newEmbeddedHub(opts natsbroker.EmbeddedOptions) (*broadcast.Hub, func(context.Context) error, error) {
	e, err := natsbroker.StartEmbedded(opts)
	if err != nil {
		return nil, nil, err
	}
	b, err := e.Connect(natsbroker.Options{})
	if err != nil {
		e.Shutdown()
		return nil, nil, err
	}
	hub := broadcast.NewHub(b, broadcast.Options{})
	shutdown := func(ctx context.Context) error {
		err := hub.Shutdown(ctx) // 1001 to the members
		err = errors.Join(err, b.Close())
		e.Shutdown()
		return err
	}
	return hub, shutdown, nil
}

// newNATS is a broker on an operated NATS cluster.
func newNATS() (*natsbroker.Broker, error) {
	return natsbroker.Connect("nats://nats-1:4222,nats://nats-2:4222", natsbroker.Options{})
}

// newRedis is a broker on one Redis server ("redis://redis:6379"). The
// client has the settings the broker needs: no retries, short timeouts.
// The broker does not own the client: close the broker, then the client.
func newRedis(url string) (*redisbroker.Broker, redis.UniversalClient, error) {
	o, err := redisbroker.ClientOptions(url)
	if err != nil {
		return nil, nil, err
	}
	client := redis.NewClient(o)
	b, err := redisbroker.New(client, redisbroker.Options{})
	return b, client, err
}

// newRedisCluster is a broker on Redis Cluster: sharded pub/sub, with
// every topic in one of 16 partitions, one connection each.
func newRedisCluster(url string) (*redisbroker.Broker, redis.UniversalClient, error) {
	o, err := redisbroker.ClusterOptions(url) // redis://node-1:6379?addr=node-2:6379
	if err != nil {
		return nil, nil, err
	}
	client := redis.NewClusterClient(o)
	b, err := redisbroker.New(client, redisbroker.Options{})
	return b, client, err
}
