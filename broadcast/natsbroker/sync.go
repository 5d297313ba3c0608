package natsbroker

import (
	"context"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"go.uber.org/zap"
)

// syncWaiter is a Subscribe waiting for its sync answers.
type syncWaiter struct {
	want map[string]bool // peers up when the request left, not answered yet
	done chan struct{}   // closed once want is empty, or on Close
}

// finish closes done, once. b.mu is held.
func (w *syncWaiter) finish() {
	select {
	case <-w.done:
	default:
		close(w.done)
	}
}

// syncPeers makes a subscription that its own server has confirmed
// effective on the servers of every peer that is up: it sends a sync
// request on syncSubj and waits until each of those peers has answered,
// or has gone down, or HealthTimeout has passed, or ctx is done. It never
// fails: a missing answer is logged at Debug, and Health covers the peer.
//
// Why an answer means the peer's server routes the topic to us: our
// server sent the new interest (RS+) to each route while it processed our
// SUB, before it received our request (the flush orders them), and it
// sends both on the same route connection, the one of our NATS account.
// A route is one ordered TCP stream, so the peer's server registered the
// interest before it delivered the request to the peer's broker; whatever
// is published on that server after the answer left reaches us. This
// holds for the servers the peers are connected to, in a full-mesh
// cluster (NATS's only kind); not for a client of a server where no broker
// runs, nor across gateways or leaf nodes.
func (b *Broker) syncPeers(ctx context.Context, topic string) {
	b.mu.Lock()
	want := make(map[string]bool)
	for id, p := range b.peers {
		if p.st.up {
			want[id] = true
		}
	}
	if len(want) == 0 || b.closing {
		b.mu.Unlock()
		return
	}
	b.nextSync++
	seq := b.nextSync
	w := &syncWaiter{want: want, done: make(chan struct{})}
	b.waiters[seq] = w
	b.mu.Unlock()
	defer func() {
		b.mu.Lock()
		delete(b.waiters, seq)
		b.mu.Unlock()
	}()

	start := time.Now()
	reply := b.inbox + "." + strconv.FormatUint(seq, 10)
	if err := b.nc.PublishRequest(b.syncSubj, reply, b.hello); err != nil {
		b.log.Debug("nats broker: join sync not sent", zap.String("topic", topic), zap.Error(err))
		return
	}
	t := time.NewTimer(b.timeout)
	defer t.Stop()
	select {
	case <-w.done:
		return
	case <-t.C:
	case <-ctx.Done():
	case <-b.stop:
	}
	b.mu.Lock()
	var missing []string
	for id := range w.want {
		if p := b.peers[id]; p != nil {
			missing = append(missing, p.part)
		}
	}
	b.mu.Unlock()
	if len(missing) > 0 {
		b.log.Debug("nats broker: join sync incomplete", zap.String("topic", topic),
			zap.Strings("unanswered", missing), zap.Duration("waited", time.Since(start)))
	}
}

// peerGoneLocked stops every sync from waiting for peer id, which went
// down or left. b.mu is held.
func (b *Broker) peerGoneLocked(id string) {
	for _, w := range b.waiters {
		if w.want[id] {
			delete(w.want, id)
			if len(w.want) == 0 {
				w.finish()
			}
		}
	}
}

// onSyncRequest answers another broker's join sync at once: this
// handler runs after our server processed everything the requester's
// server sent before the request.
func (b *Broker) onSyncRequest(m *nats.Msg) {
	c, ok := b.parse(m)
	if !ok || c.ID == b.id || m.Reply == "" {
		return
	}
	_ = b.nc.Publish(m.Reply, b.hello) // a lost answer: the requester's bound
	b.heard(c, time.Now())
}

// onSyncAnswer records a peer's answer to one of this broker's syncs.
func (b *Broker) onSyncAnswer(m *nats.Msg) {
	c, ok := b.parse(m)
	if !ok {
		return
	}
	seq, err := strconv.ParseUint(m.Subject[strings.LastIndexByte(m.Subject, '.')+1:], 10, 64)
	if err != nil {
		return
	}
	b.mu.Lock()
	if w := b.waiters[seq]; w != nil && w.want[c.ID] {
		delete(w.want, c.ID)
		if len(w.want) == 0 {
			w.finish()
		}
	}
	b.mu.Unlock()
	b.heard(c, time.Now())
}
