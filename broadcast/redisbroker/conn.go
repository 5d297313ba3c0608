package redisbroker

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// Kinds of the (un)subscribe commands, as Redis names their answers.
const (
	kindSubscribe    = "subscribe"
	kindSSubscribe   = "ssubscribe"
	kindUnsubscribe  = "unsubscribe"
	kindSUnsubscribe = "sunsubscribe"
)

// subscribeKind and unsubscribeKind are the commands of b's pub/sub.
func (b *Broker) subscribeKind() string {
	if b.sharded {
		return kindSSubscribe
	}
	return kindSubscribe
}

func (b *Broker) unsubscribeKind() string {
	if b.sharded {
		return kindSUnsubscribe
	}
	return kindUnsubscribe
}

// conn is one pub/sub connection of a partition and its reader goroutine.
//
// The reader is blocked in Receive with no deadline at all: a read
// deadline that fires in the middle of a reply drops the bytes go-redis
// has read of it while keeping the connection, and the next read then
// parses from the middle of a payload, which a publisher controls (a
// forged message on another channel). The reader ends at the first
// connection error, or when run closes the PubSub (stop); it never waits
// for anything but Receive and run. run judges health on its own clock,
// from the reader's events.
type conn struct {
	ps     *redis.PubSub
	events chan event    // reader → run
	broken chan error    // a command's write failed (capacity 1)
	quit   chan struct{} // closed by stop: the reader sends nothing more
	done   chan struct{} // closed when the reader has returned

	// lastRead is when the reader last received anything (UnixNano): a
	// connection still delivering a backlog is slow, not dead.
	lastRead atomic.Int64

	// mu guards pending: the commands written on ps whose answers have
	// not all been read, in the order written (writers hold p.cmd).
	mu      sync.Mutex
	pending []*command
}

// command is an (un)subscribe command written on a conn. Redis answers
// it with one confirmation per channel, in order, or with one error reply
// for the whole command.
type command struct {
	kind string
	chs  []string
	next int // the channel whose confirmation comes next
}

func (c *command) subscribes() bool { return c.kind == kindSubscribe || c.kind == kindSSubscribe }

// event is what a reader tells run.
type event struct {
	kind    eventKind
	payload string   // evProbe
	err     error    // evRefused, evConnErr
	cmd     *command // evRefused: the command Redis refused, nil if none was pending
}

type eventKind int

const (
	evProbe           eventKind = iota // the probe came back
	evProbeSubscribed                  // the probe channel is subscribed: the connection works
	evDropped                          // Redis dropped the probe's subscription (slot moved or unserved)
	evRefused                          // an error reply to a command
	evConnErr                          // the connection failed; the reader has ended
)

func newConn(ps *redis.PubSub) *conn {
	return &conn{
		ps:     ps,
		events: make(chan event, 16),
		broken: make(chan error, 1),
		quit:   make(chan struct{}),
		done:   make(chan struct{}),
	}
}

// send writes an (un)subscribe command for chs, recording it first so
// that the reader can attribute Redis's answer to it. The caller holds
// p.cmd, which keeps the record in the order of the writes. A write that
// fails retires the connection (broken): go-redis may have dialled
// another one under the same PubSub, which the record does not describe.
func (c *conn) send(ctx context.Context, kind string, chs ...string) error {
	c.mu.Lock()
	c.pending = append(c.pending, &command{kind: kind, chs: chs})
	c.mu.Unlock()
	var err error
	switch kind {
	case kindSubscribe:
		err = c.ps.Subscribe(ctx, chs...)
	case kindSSubscribe:
		err = c.ps.SSubscribe(ctx, chs...)
	case kindUnsubscribe:
		err = c.ps.Unsubscribe(ctx, chs...)
	case kindSUnsubscribe:
		err = c.ps.SUnsubscribe(ctx, chs...)
	}
	if err != nil {
		select {
		case c.broken <- err:
		default:
		}
	}
	return err
}

// answered records a confirmation of (kind, ch). One that matches no
// pending command (Redis dropping a sharded channel by itself) changes
// nothing.
func (c *conn) answered(kind, ch string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.pending) == 0 {
		return
	}
	head := c.pending[0]
	if head.kind != kind || head.chs[head.next] != ch {
		return
	}
	if head.next++; head.next == len(head.chs) {
		c.pending[0] = nil
		c.pending = c.pending[1:]
	}
}

// refused removes and returns the command an error reply answers: the
// oldest pending one (Redis answers in order). Nil if none is pending.
func (c *conn) refused() *command {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.pending) == 0 {
		return nil
	}
	head := c.pending[0]
	c.pending[0] = nil
	c.pending = c.pending[1:]
	return head
}

// silentSince returns when c last received anything, or since if later.
func (c *conn) silentSince(since time.Time) time.Time {
	if t := time.Unix(0, c.lastRead.Load()); t.After(since) {
		return t
	}
	return since
}

// stop ends the reader and waits for it: closing the PubSub closes its
// connection, which ends the blocked Receive.
func (c *conn) stop() {
	close(c.quit)
	_ = c.ps.Close()
	<-c.done
}
