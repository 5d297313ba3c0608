package redisbroker

import (
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
)

// Client timeouts that ClientOptions and ClusterOptions set when the URL
// does not. They bound how long a Publish can hang on a server that
// stopped answering before the broker reports its partition down.
const (
	ClientDialTimeout  = 2 * time.Second
	ClientReadTimeout  = time.Second
	ClientWriteTimeout = time.Second
)

// ClientOptions parses a redis:// or rediss:// URL (see redis.ParseURL) into
// options for a broker's *redis.Client: no retry (MaxRetries -1: a PUBLISH
// whose reply was lost is not sent twice, so messages are neither
// duplicated nor reordered), ClientDialTimeout, ClientReadTimeout and
// ClientWriteTimeout unless the URL sets them (a positive max_retries in
// the URL is kept, and New warns), and ContextTimeoutEnabled, so that a
// Publish's context bounds it.
func ClientOptions(url string) (*redis.Options, error) {
	o, err := redis.ParseURL(url)
	if err != nil {
		return nil, fmt.Errorf("redisbroker: %w", err)
	}
	if o.MaxRetries == 0 {
		o.MaxRetries = -1
	}
	o.DialTimeout = orDefault(o.DialTimeout, ClientDialTimeout)
	o.ReadTimeout = orDefault(o.ReadTimeout, ClientReadTimeout)
	o.WriteTimeout = orDefault(o.WriteTimeout, ClientWriteTimeout)
	o.ContextTimeoutEnabled = true
	return o, nil
}

// ClusterOptions parses a Redis Cluster URL (see redis.ParseClusterURL:
// redis://host1:6379?addr=host2:6379&addr=host3:6379) into options for a
// broker's *redis.ClusterClient, with the settings of ClientOptions, and
// MaxRedirects -1 unless the URL sets max_redirects: the cluster client
// otherwise runs a command again after a lost connection (its redirect
// loop retries), which can send a PUBLISH twice. Without redirects, a
// Publish that meets a slot being moved fails instead of following it;
// the partition of a moved slot is reported down anyway.
func ClusterOptions(url string) (*redis.ClusterOptions, error) {
	o, err := redis.ParseClusterURL(url)
	if err != nil {
		return nil, fmt.Errorf("redisbroker: %w", err)
	}
	if o.MaxRetries == 0 {
		o.MaxRetries = -1
	}
	if o.MaxRedirects == 0 {
		o.MaxRedirects = -1
	}
	o.DialTimeout = orDefault(o.DialTimeout, ClientDialTimeout)
	o.ReadTimeout = orDefault(o.ReadTimeout, ClientReadTimeout)
	o.WriteTimeout = orDefault(o.WriteTimeout, ClientWriteTimeout)
	o.ContextTimeoutEnabled = true
	return o, nil
}
