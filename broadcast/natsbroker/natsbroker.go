// Package natsbroker is a broadcast.Broker on NATS (nats.go). It connects to
// an operated NATS cluster, or to a server embedded in the process
// (StartEmbedded): alone for one instance, or joined by routes to the
// embedded servers of a few other instances, so they form a cluster among
// themselves without any other server to run.
//
// NATS delivers at most once and keeps one publisher's messages in order;
// it restores the subscriptions itself after a reconnect. Interest travels
// between the servers of a cluster asynchronously: a subscription confirmed
// by its own server reaches the others a moment later.
package natsbroker

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/chiws/chiws/broadcast"
	"github.com/nats-io/nats.go"
	"go.uber.org/zap"
)

// DefaultSubjectPrefix is prepended to topics to make NATS subjects.
const DefaultSubjectPrefix = "chiws.broadcast."

// DefaultConfirmTimeout bounds Subscribe's confirmation round trip when
// its context has no deadline.
const DefaultConfirmTimeout = 10 * time.Second

// Options configures a Broker.
type Options struct {
	// SubjectPrefix is prepended to every topic to make its NATS subject,
	// so that several applications can share a NATS cluster. Empty means
	// DefaultSubjectPrefix; it must end with '.'.
	SubjectPrefix string

	// NATS are extra nats.go options (credentials, TLS, a name). They are
	// applied first; the broker then sets its own reconnect behaviour:
	// reconnect forever, no buffering while disconnected (Publish fails
	// instead), and the disconnect, reconnect and closed handlers.
	NATS []nats.Option

	// Logger receives connection changes. Nil means no logs.
	Logger *zap.Logger
}

// Broker is a broadcast.Broker on a NATS connection. It also implements
// broadcast.StateNotifier.
type Broker struct {
	nc     *nats.Conn
	prefix string
	log    *zap.Logger

	mu      sync.Mutex
	next    int
	notify  map[int]func(up bool)
	closing bool
}

// Connect connects to the NATS servers of url (comma-separated nats://
// URLs of a cluster) and returns a broker on the connection. The broker
// owns the connection: Close closes it.
func Connect(url string, opts Options) (*Broker, error) {
	b := &Broker{prefix: opts.SubjectPrefix, log: opts.Logger, notify: make(map[int]func(bool))}
	if b.prefix == "" {
		b.prefix = DefaultSubjectPrefix
	}
	if b.prefix[len(b.prefix)-1] != '.' {
		return nil, fmt.Errorf("natsbroker: SubjectPrefix %q must end with '.'", b.prefix)
	}
	if err := broadcast.ValidateTopic(b.prefix[:len(b.prefix)-1]); err != nil {
		return nil, fmt.Errorf("natsbroker: SubjectPrefix %q: %w", b.prefix, err)
	}
	if b.log == nil {
		b.log = zap.NewNop()
	}
	o := append([]nats.Option(nil), opts.NATS...)
	o = append(o,
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250*time.Millisecond),
		// No buffering while disconnected: Publish fails at once.
		nats.ReconnectBufSize(-1),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			b.log.Warn("nats disconnected", zap.Error(err))
			b.setState(false)
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			b.log.Info("nats reconnected", zap.String("url", nc.ConnectedUrlRedacted()))
			b.setState(true)
		}),
	)
	nc, err := nats.Connect(url, o...)
	if err != nil {
		return nil, fmt.Errorf("natsbroker: connect: %w: %w", broadcast.ErrBrokerUnavailable, err)
	}
	b.nc = nc
	return b, nil
}

// Conn returns the broker's NATS connection.
func (b *Broker) Conn() *nats.Conn { return b.nc }

func (b *Broker) subject(topic string) (string, error) {
	if err := broadcast.ValidateTopic(topic); err != nil {
		return "", err
	}
	return b.prefix + topic, nil
}

// Publish sends payload to topic. It fails at once with
// broadcast.ErrBrokerUnavailable while the connection is down.
func (b *Broker) Publish(ctx context.Context, topic string, payload []byte) error {
	subj, err := b.subject(topic)
	if err != nil {
		return fmt.Errorf("natsbroker: publish: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("natsbroker: publish: %w", err)
	}
	if err := b.nc.Publish(subj, payload); err != nil {
		return fmt.Errorf("natsbroker: publish: %w", b.wrap(err))
	}
	return nil
}

// wrap marks the errors of a missing server with ErrBrokerUnavailable.
func (b *Broker) wrap(err error) error {
	switch {
	case errors.Is(err, nats.ErrConnectionClosed):
		return fmt.Errorf("%w: %w", broadcast.ErrBrokerClosed, err)
	case errors.Is(err, nats.ErrReconnectBufExceeded), errors.Is(err, nats.ErrConnectionReconnecting),
		errors.Is(err, nats.ErrTimeout), errors.Is(err, nats.ErrNoServers),
		errors.Is(err, nats.ErrDisconnected), !b.nc.IsConnected():
		return fmt.Errorf("%w: %w", broadcast.ErrBrokerUnavailable, err)
	}
	return err
}

// Subscribe calls h with every message published to topic. It returns once
// the server has confirmed the subscription (a flush round trip), within
// ctx's deadline or DefaultConfirmTimeout.
func (b *Broker) Subscribe(ctx context.Context, topic string, h func([]byte)) (broadcast.Subscription, error) {
	subj, err := b.subject(topic)
	if err != nil {
		return nil, fmt.Errorf("natsbroker: subscribe: %w", err)
	}
	if h == nil {
		return nil, errors.New("natsbroker: subscribe: nil handler")
	}
	if !b.nc.IsConnected() {
		return nil, fmt.Errorf("natsbroker: subscribe: %w", b.wrap(nats.ErrDisconnected))
	}
	// nats.go delivers each subscription's messages in order on a
	// goroutine of its own; msg.Data is not reused.
	sub, err := b.nc.Subscribe(subj, func(m *nats.Msg) { h(m.Data) })
	if err != nil {
		return nil, fmt.Errorf("natsbroker: subscribe: %w", b.wrap(err))
	}
	// Pending limits: h never blocks, so these only guard against a
	// stalled process; NATS drops (at most once) rather than grow.
	_ = sub.SetPendingLimits(1<<16, 64<<20)
	if _, ok := ctx.Deadline(); !ok {
		// FlushWithContext insists on a deadline.
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, DefaultConfirmTimeout)
		defer cancel()
	}
	if err := b.nc.FlushWithContext(ctx); err != nil {
		_ = sub.Unsubscribe()
		return nil, fmt.Errorf("natsbroker: subscribe: %w", b.wrap(err))
	}
	return subscription{sub}, nil
}

type subscription struct{ s *nats.Subscription }

func (s subscription) Unsubscribe() error {
	err := s.s.Unsubscribe()
	if err != nil && !errors.Is(err, nats.ErrConnectionClosed) && !errors.Is(err, nats.ErrBadSubscription) {
		return fmt.Errorf("natsbroker: unsubscribe: %w", err)
	}
	return nil
}

// NotifyState implements broadcast.StateNotifier: f runs on nats.go's
// callback goroutine, on disconnects and reconnects.
func (b *Broker) NotifyState(f func(up bool)) (stop func()) {
	b.mu.Lock()
	id := b.next
	b.next++
	b.notify[id] = f
	b.mu.Unlock()
	return func() {
		b.mu.Lock()
		delete(b.notify, id)
		b.mu.Unlock()
	}
}

func (b *Broker) setState(up bool) {
	b.mu.Lock()
	if b.closing {
		b.mu.Unlock()
		return
	}
	fs := make([]func(bool), 0, len(b.notify))
	for _, f := range b.notify {
		fs = append(fs, f)
	}
	b.mu.Unlock()
	// Outside mu: f may take its own locks, which may be held by someone
	// calling stop.
	for _, f := range fs {
		f(up)
	}
}

// Close closes the NATS connection, which ends every subscription.
func (b *Broker) Close() error {
	b.mu.Lock()
	b.closing = true
	b.mu.Unlock()
	b.nc.Close()
	return nil
}
