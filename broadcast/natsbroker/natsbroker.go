// Package natsbroker is a broadcast.Broker on NATS (nats.go). It connects to
// an operated NATS cluster, or to a server embedded in the process
// (StartEmbedded): alone for one instance, or joined by routes to the
// embedded servers of a few other instances, so they form a cluster among
// themselves without any other server to run.
//
// # Subjects
//
// A topic is published on the NATS subject <SubjectPrefix><topic>
// ("chiws.broadcast.room" by default), its payload a broadcast.Envelope.
// Any NATS client may publish there (broadcast.AppendEnvelope gives the
// bytes; docs/broadcast.md gives them for other languages): members receive
// such messages like the hubs' own. Only the join sync below does not cover
// such a publisher, unless it runs beside a broker on the same server.
//
// The brokers of a fleet also talk among themselves on control subjects
// under _CHIWS.<SubjectPrefix> (heartbeats on ...hb, join syncs on
// ...sync) and answer syncs on nats.go's inbox (_INBOX. by default).
// SubjectPrefix may not start with "_CHIWS.", so no topic's subject is ever
// a control subject. A NATS user with subject permissions needs publish
// and subscribe on <SubjectPrefix>>, _CHIWS.<SubjectPrefix>> and its inbox.
//
// # Delivery
//
// NATS delivers at most once. It keeps one publisher's messages to one
// topic in order; messages to two topics may arrive at a member of both in
// another order than they were published, even from one publisher. It
// restores the subscriptions itself after a reconnect.
//
// Interest travels between the servers of a cluster asynchronously: a
// subscription confirmed by its own server reaches the others a moment
// later, and a message published there meanwhile is lost. So Subscribe,
// once its server has confirmed the subscription, sends a join sync
// request on _CHIWS.<SubjectPrefix>sync, which every other broker answers
// at once, and waits for the answer of each peer that is up (see Health).
// Our server sent the new interest to each route before our request, on
// the same route connection (the one of our NATS account), and a route is
// one ordered TCP stream: so when a peer's broker answers, its server
// already routes the topic to us, and any message published there after
// that reaches the new subscription. The wait is bounded by HealthTimeout
// and by Subscribe's context; a peer that has not answered by then does
// not fail Subscribe (it is logged at Debug), since Health reports that
// peer down if it stays silent. The guarantee covers publishers connected
// to a server where a broker runs, in one cluster (not across gateways or
// leaf nodes), and the peers heard before Subscribe was called. A broker
// publishes a heartbeat from Connect, and the others answer a newcomer's
// with theirs at once, so peers know each other a round trip after a
// start, not a HealthInterval.
//
// # Health
//
// The broker implements broadcast.Monitor. Its parts are:
//
//   - "connection": the NATS connection; down from a disconnect to the
//     reconnect, and from the start when it is not connected.
//   - "probe": every HealthInterval the broker publishes a heartbeat and
//     receives its own back; down when none came back for HealthTimeout.
//     This catches a server that froze, or a path that black-holes
//     traffic, which nats.go notices only after minutes of missed pings.
//   - "slow-consumer": down when nats.go dropped messages for one of the
//     connection's subscriptions, whose handler had fallen behind by more
//     than its pending limits (65536 messages or 64 MiB for Subscribe's),
//     and until none was dropped for HealthTimeout. nats.go reports the
//     first drop of a run to the connection's error handler, which the
//     broker installs; the broker then follows the subscription's count
//     of drops every HealthInterval. A hub's handler never blocks, so this
//     means a process overloaded or stalled, and messages lost here.
//   - "peer <name>/<id>" (or "peer <id>" without a name): each other
//     broker instance of the fleet this one has heard. It is down when
//     its heartbeats have not arrived for HealthTimeout: the instance
//     stopped, or the route between its server and ours is cut while both
//     servers stay up, which NATS itself does not report and which loses
//     messages silently (Publish still returns nil). It is down too when
//     its heartbeats arrive but say that ours have not reached it for
//     HealthTimeout: the path is cut in the direction from us to it only.
//     So both sides of a one-way cut report it, each with the direction
//     in the part's Err.
//
// For the second direction, each heartbeat lists the peers its sender
// knows, with how long ago it last heard each (JSON, about 26 bytes a
// peer). The list holds at most MaxHeardPeers, the lowest IDs, and says
// when it is cut short; a peer left out of it cannot check that direction
// with this sender and does not blame it. The check starts once we have
// heard the peer for HealthTimeout (time for our heartbeat to reach a
// newcomer, or one heard again after a cut). A peer of an earlier version
// sends no list, and is checked in the first direction only.
//
// A peer that closes its broker says goodbye and is removed without going
// down. A peer that disappears without a goodbye (killed, or cut off for
// good) stays down until it is heard again, or until ForgetAfter has
// passed since it was last heard, when it is removed. From here, a crash
// cannot be told from a partition, so the crash of one instance reports
// down on every other for up to ForgetAfter, unless it is restarted in
// place: a peer heard under a new ID with the Name of a known one (the
// same instance started again, with a new random ID) replaces it at once,
// logged at Info ("peer restarted"). This needs a Name unique in the
// fleet and stable across restarts (a pod's or host's name); when two live
// instances share one, the dropped one is heard again, which is logged
// once at Warn, and that Name no longer counts as a restart while a peer
// bears it.
//
// A peer is reported down between HealthTimeout-HealthInterval and
// HealthTimeout+HealthInterval after its last heartbeat left (or, for a
// one-way cut, after our last heartbeat reached it), plus delivery time.
package natsbroker

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/chiws/chiws/broadcast"
	"github.com/nats-io/nats.go"
	"go.uber.org/zap"
)

// DefaultSubjectPrefix is prepended to topics to make NATS subjects.
const DefaultSubjectPrefix = "chiws.broadcast."

// ControlPrefix starts the subjects brokers use among themselves, followed
// by the SubjectPrefix: a leading '_' marks them as internal, as NATS does
// with _INBOX, and SubjectPrefix may not start with it.
const ControlPrefix = "_CHIWS."

// DefaultConfirmTimeout bounds Subscribe's confirmation round trip when
// its context has no deadline.
const DefaultConfirmTimeout = 10 * time.Second

// Defaults of Options' health fields.
const (
	// DefaultHealthInterval: one small message per second per instance,
	// which every other instance receives.
	DefaultHealthInterval = time.Second

	// DefaultHealthTimeouts is HealthTimeout in HealthIntervals when it is
	// not set: three heartbeats lost in a row plus one interval of slack
	// for a slow delivery or a pause, as NATS delivers at most once.
	DefaultHealthTimeouts = 4

	// DefaultForgetAfter is long enough for a route to be re-established
	// or a NATS server to restart (seconds) without forgetting a peer,
	// and short enough that one crashed instance does not keep the rest
	// of the fleet down for longer than an orchestrator takes to notice.
	DefaultForgetAfter = time.Minute
)

// MaxNameLen is the longest Options.Name, in bytes.
const MaxNameLen = 64

// Options configures a Broker.
type Options struct {
	// SubjectPrefix is prepended to every topic to make its NATS subject,
	// so that several applications can share a NATS cluster. Empty means
	// DefaultSubjectPrefix; it must end with '.', and may not start with
	// ControlPrefix.
	SubjectPrefix string

	// NATS are extra nats.go options (credentials, TLS, a name,
	// nats.RetryOnFailedConnect to start while the server is down). They
	// are applied first; the broker then sets its own reconnect
	// behaviour: reconnect forever, no buffering while disconnected
	// (Publish fails instead), and the connect, disconnect, reconnect and
	// closed handlers. It also installs an error handler, which calls the
	// one of a nats.ErrorHandler given here after its own. nats.NoEcho is
	// refused: a hub receives its own messages through the broker.
	NATS []nats.Option

	// Name names this instance in the Health of the others ("peer
	// web-2/...") and in their logs: printable ASCII without spaces, at
	// most MaxNameLen bytes. Empty: they see only its random ID. It
	// should be unique in the fleet and kept across restarts: an instance
	// heard under a new ID with the Name of a known one is taken for that
	// one restarted, and replaces it at once in the others' Health.
	Name string

	// HealthInterval is how often the broker publishes its heartbeat and
	// checks the others'. Zero means DefaultHealthInterval.
	HealthInterval time.Duration

	// HealthTimeout is how long the broker's own heartbeat (the probe)
	// or a peer's may go unheard before that part is down. Zero means
	// DefaultHealthTimeouts times HealthInterval; it must be at least
	// twice HealthInterval, so that one lost heartbeat does not flap.
	HealthTimeout time.Duration

	// ForgetAfter is how long a peer that was not heard, and did not say
	// goodbye, stays down before it is removed from Health. Zero means
	// DefaultForgetAfter; it must exceed HealthTimeout.
	ForgetAfter time.Duration

	// Logger receives the changes of each part of Health (Warn when down,
	// with the reason, Info when up), once per change, and at Warn the
	// asynchronous errors of NATS other than slow consumers (a permissions
	// violation), which nats.go would otherwise print to stderr. Nil means
	// no logs.
	Logger *zap.Logger

	// Subscribe's pending limits, set only by tests (export_test.go), so
	// that a slow consumer takes a few messages rather than 65537; zero
	// means the defaults below.
	pendingMsgs, pendingBytes int
}

// Subscribe's pending limits per subscription: the messages nats.go holds
// for a handler that has not taken them yet, past which it drops them (a
// slow consumer, reported by the part PartSlowConsumer). A hub's handler
// never blocks, so these only guard against a stalled process.
const (
	pendingMsgs  = 1 << 16
	pendingBytes = 64 << 20
)

// Broker is a broadcast.Broker on a NATS connection. It also implements
// broadcast.Monitor.
//
// Goroutines: besides nats.go's own, the broker runs one that publishes
// heartbeats and checks the parts' timeouts, and one that calls the
// NotifyHealth functions; both are owned by the broker, and Close stops
// them and waits.
type Broker struct {
	nc     *nats.Conn
	prefix string
	log    *zap.Logger

	id, name  string
	pendMsgs  int // Subscribe's pending limits
	pendBytes int
	interval  time.Duration
	timeout   time.Duration
	forget    time.Duration
	hbSubj    string // heartbeats and goodbyes
	syncSubj  string // join sync requests
	inbox     string // answers to this broker's sync requests: inbox.<seq>
	hello     []byte // this broker's heartbeat, also its answer to a sync
	goodbye   []byte
	firstEcho chan struct{} // closed by the first own heartbeat received

	// mu guards the fields below. It is never held while calling a
	// NotifyHealth function, nor during network I/O. It may be held while
	// taking a nats.Subscription's lock (never the other way round).
	mu       sync.Mutex
	closing  bool
	started  bool // Connect has returned: state changes are logged
	conn     state
	probe    state
	slow     state                      // PartSlowConsumer
	slowSubs map[*nats.Subscription]int // subscriptions that dropped: their count seen
	lastDrop time.Time                  // when a drop was last seen
	lastEcho time.Time                  // when this broker last received its own heartbeat
	echoed   bool
	peers    map[string]*peer
	retired  map[string]retired // IDs replaced by a restart, kept ForgetAfter
	shared   map[string]bool    // Names that two live peers bear
	changes  uint64             // state changes so far
	queue    []change           // changes the notifier has not delivered yet
	watchers []watcher
	nextW    int
	waiters  map[uint64]*syncWaiter
	nextSync uint64

	wake    chan struct{} // size one: the queue has changes
	beatNow chan struct{} // size one: publish a heartbeat now
	stop    chan struct{} // closed by Close
	wg      sync.WaitGroup
	once    sync.Once
}

// Connect connects to the NATS servers of url (comma-separated nats://
// URLs of a cluster) and returns a broker on the connection. The broker
// owns the connection: Close closes it. When the connection is up, Connect
// also waits for the broker's first heartbeat to come back (at most
// HealthTimeout), so that Health is known from the start.
func Connect(url string, opts Options) (*Broker, error) {
	b, err := newBroker(opts)
	if err != nil {
		return nil, err
	}
	o := append([]nats.Option(nil), opts.NATS...)
	o = append(o,
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250*time.Millisecond),
		// No buffering while disconnected: Publish fails at once.
		nats.ReconnectBufSize(-1),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err == nil {
				err = errors.New("disconnected")
			}
			b.setConn(false, err)
		}),
		nats.ReconnectHandler(func(*nats.Conn) { b.setConn(true, nil) }),
		// Called instead of ReconnectHandler when the first attempt of
		// a nats.RetryOnFailedConnect connection failed.
		nats.ConnectHandler(func(*nats.Conn) { b.setConn(true, nil) }),
		// nats.go gives up on some errors (a server that refuses the
		// credentials); not called for Close, as setConn ignores it then.
		nats.ClosedHandler(func(*nats.Conn) { b.setConn(false, nats.ErrConnectionClosed) }),
		// After opts.NATS: the last error handler set wins, so this one
		// wraps the one set there, if any.
		func(o *nats.Options) error {
			user := o.AsyncErrorCB
			o.AsyncErrorCB = func(nc *nats.Conn, sub *nats.Subscription, err error) {
				b.onAsyncError(sub, err)
				if user != nil {
					user(nc, sub, err)
				}
			}
			return nil
		},
	)
	nc, err := nats.Connect(url, o...)
	if err != nil {
		return nil, fmt.Errorf("natsbroker: connect: %w: %w", broadcast.ErrBrokerUnavailable, err)
	}
	if nc.Opts.NoEcho {
		nc.Close()
		return nil, errors.New("natsbroker: the NoEcho option is not supported: a hub receives its own messages through the broker")
	}
	b.nc = nc
	if err := b.start(); err != nil {
		nc.Close()
		return nil, err
	}
	return b, nil
}

// Conn returns the broker's NATS connection.
func (b *Broker) Conn() *nats.Conn { return b.nc }

// ID returns the broker's instance ID, random and unique in the fleet; the
// other instances name this one by it in their Health.
func (b *Broker) ID() string { return b.id }

func (b *Broker) subject(topic string) (string, error) {
	if err := broadcast.ValidateTopic(topic); err != nil {
		return "", err
	}
	return b.prefix + topic, nil
}

// Publish sends payload to topic. It fails at once with
// broadcast.ErrBrokerUnavailable while the connection is down. It returns
// nil when the local server took the message, even when a peer is down
// and will not receive it: Health says so.
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
// ctx's deadline or DefaultConfirmTimeout, and then once every peer that
// is up has answered a join sync (see syncPeers), within HealthTimeout. A
// peer that does not answer in time does not fail Subscribe: it is logged
// at Debug, and Health reports the peer down if it stays silent.
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
	// Past these nats.go drops (at most once) rather than grow, and
	// reports it to onAsyncError.
	_ = sub.SetPendingLimits(b.pendMsgs, b.pendBytes)
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
	b.syncPeers(ctx, topic)
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

// Close says goodbye to the peers (so that they remove this instance from
// their Health without reporting it down), stops the broker's goroutines
// and closes the NATS connection, which ends every subscription. No
// NotifyHealth function is called once Close has returned. It may be
// called more than once.
func (b *Broker) Close() error {
	b.once.Do(func() {
		b.mu.Lock()
		b.closing = true
		for seq, w := range b.waiters {
			delete(b.waiters, seq)
			w.finish()
		}
		b.mu.Unlock()
		close(b.stop)
		b.wg.Wait()
		if b.nc.IsConnected() {
			// At most once, like every NATS message: a lost goodbye
			// leaves this instance down on a peer until ForgetAfter.
			if err := b.nc.Publish(b.hbSubj, b.goodbye); err == nil {
				_ = b.nc.FlushTimeout(min(b.timeout, time.Second))
			}
		}
		b.nc.Close()
	})
	return nil
}

// validateName reports whether name suits Options.Name.
func validateName(name string) error {
	if len(name) > MaxNameLen {
		return fmt.Errorf("natsbroker: Name of %d bytes, limit %d", len(name), MaxNameLen)
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; c <= ' ' || c > '~' {
			return fmt.Errorf("natsbroker: Name %q: byte %#x at %d, want printable ASCII without spaces", name, c, i)
		}
	}
	return nil
}

// validatePrefix reports whether prefix suits Options.SubjectPrefix.
func validatePrefix(prefix string) error {
	if prefix[len(prefix)-1] != '.' {
		return fmt.Errorf("natsbroker: SubjectPrefix %q must end with '.'", prefix)
	}
	if err := broadcast.ValidateTopic(prefix[:len(prefix)-1]); err != nil {
		return fmt.Errorf("natsbroker: SubjectPrefix %q: %w", prefix, err)
	}
	if strings.HasPrefix(prefix, ControlPrefix) {
		return fmt.Errorf("natsbroker: SubjectPrefix %q may not start with %q, kept for control subjects", prefix, ControlPrefix)
	}
	return nil
}

var _ broadcast.Monitor = (*Broker)(nil)
