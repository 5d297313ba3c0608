package broadcast

import (
	"context"
	"fmt"
	"strings"
)

// Broker carries opaque messages between the hubs of every process that
// serves an application. NewMemory is the broker of one process; the
// natsbroker and redisbroker modules reach a fleet. A Broker is safe for
// concurrent use and may be shared by several hubs.
type Broker interface {
	// Publish sends payload to every subscription to topic, in every
	// process. It returns once the broker has taken the message, not once
	// it was delivered. When the broker cannot reach its server, Publish
	// fails at once with an error wrapping ErrBrokerUnavailable, without
	// buffering. Payload is not retained.
	Publish(ctx context.Context, topic string, payload []byte) error

	// Subscribe calls h with every message published to topic from now
	// on, and returns once the broker's server has confirmed the
	// subscription. In a cluster, other servers may learn of it a little
	// later. h may be called from several goroutines at once, must not
	// block and must not call the broker; it may retain payload, which
	// nobody modifies. After a reconnect the broker restores the
	// subscription by itself.
	Subscribe(ctx context.Context, topic string, h func(payload []byte)) (Subscription, error)

	// Close ends every subscription and releases the broker's resources.
	// It does not close a connection or server that the caller provided.
	Close() error
}

// Subscription is returned by Broker.Subscribe.
type Subscription interface {
	// Unsubscribe stops the subscription. Once it returns, its handler is
	// not called again, except possibly by a call already under way.
	Unsubscribe() error
}

// StateNotifier is implemented by brokers that know whether their server is
// reachable. Hub calls NotifyState when Options.OnBrokerState is set.
type StateNotifier interface {
	// NotifyState calls f with false when the broker loses its server and
	// with true when it is back, on changes only. f runs synchronously on
	// the broker's goroutine and must not block. The returned function
	// stops the notifications; one already under way may still complete.
	NotifyState(f func(up bool)) (stop func())
}

// MaxTopicLen is the longest topic, in bytes.
const MaxTopicLen = 200

// ValidateTopic reports whether topic can name a topic on every broker: 1
// to MaxTopicLen bytes of printable ASCII without space, '*' and '>' (NATS
// wildcards), and no empty dot-separated token (NATS subjects). The error
// wraps ErrInvalidTopic. Brokers call it on their input too.
func ValidateTopic(topic string) error {
	if topic == "" || len(topic) > MaxTopicLen {
		return fmt.Errorf("%w: length %d, want 1 to %d bytes", ErrInvalidTopic, len(topic), MaxTopicLen)
	}
	for i := 0; i < len(topic); i++ {
		if c := topic[i]; c <= ' ' || c > '~' || c == '*' || c == '>' {
			return fmt.Errorf("%w: byte %#x at %d", ErrInvalidTopic, c, i)
		}
	}
	if topic[0] == '.' || topic[len(topic)-1] == '.' || strings.Contains(topic, "..") {
		return fmt.Errorf("%w: empty dot-separated token", ErrInvalidTopic)
	}
	return nil
}
