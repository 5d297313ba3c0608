package broadcast

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"
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
	// subscription, and, for brokers that can promise it (natsbroker asks
	// its peers), once a message published anywhere reaches it. h may be called from several goroutines at once, must not
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

// Monitor is implemented by brokers that watch whether messages still reach
// the other instances: their connection to the server, each partition's
// subscription, a probe through the publish path, or each peer instance.
// The Hub uses it for Options.OnBrokerState and Stats.
type Monitor interface {
	// Health returns the broker's current view. It is known from the
	// start: a broker created while its server is down reports down.
	Health() Health

	// PartOf returns the name of the part (of kind PartTopics) that
	// carries topic, or "" when no part carries some topics only. It is a
	// function of topic alone: it takes no lock, so the hub may call it
	// from a NotifyHealth callback.
	PartOf(topic string) string

	// NotifyHealth calls f with the new Health after each change of a
	// part's state, in the order the changes happened. f runs
	// synchronously on a broker goroutine, perhaps with the broker's
	// locks held: it must not block and must not call the broker, PartOf
	// excepted (the hub keeps the Health f receives for Stats and
	// CloseCutOff). The returned function stops the notifications; one
	// already under way may still complete.
	NotifyHealth(f func(Health)) (stop func())
}

// Health is a broker's view of whether messages reach the fleet.
type Health struct {
	// Up is false while any part is down: a message published now may
	// not reach every instance, or every instance's messages may not
	// reach this one.
	Up bool

	// Parts gives each watched part, sorted by Name: the connection, a
	// partition ("partition 7"), a peer instance ("peer web-2").
	Parts []PartHealth
}

// PartHealth is the state of one part a broker watches.
type PartHealth struct {
	Name  string
	Kind  PartKind
	Up    bool
	Since time.Time // when Up last changed
	Err   error     // why it is down; nil when up
}

// PartKind says which messages a part's outage loses.
type PartKind uint8

const (
	// PartAll carries every topic: the connection to the server, a probe
	// through the publish path. Down, this instance is cut off.
	PartAll PartKind = iota

	// PartTopics carries some topics, those Monitor.PartOf names it for:
	// a partition. Down, their messages are lost here, and on every
	// instance when the cause is the server's (a moved slot).
	PartTopics

	// PartPeer is another instance. Down, messages between it and this
	// one are lost; this instance still reaches every other.
	PartPeer
)

// HealthOf returns the Health of parts, for brokers: sorted by Name, and
// up when every part is. It sorts parts in place.
func HealthOf(parts []PartHealth) Health {
	slices.SortFunc(parts, func(a, b PartHealth) int { return strings.Compare(a.Name, b.Name) })
	h := Health{Up: true, Parts: parts}
	for _, p := range parts {
		h.Up = h.Up && p.Up
	}
	return h
}

// Down returns the names of the parts that are down.
func (h Health) Down() []string {
	var down []string
	for _, p := range h.Parts {
		if !p.Up {
			down = append(down, p.Name)
		}
	}
	return down
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
