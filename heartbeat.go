package chiws

import (
	"cmp"
	"context"
	"errors"
	"sync"
	"time"

	"github.com/coder/websocket"
	"go.uber.org/zap"
)

// heartbeat is a socket's keep-alive. It owns one runtime timer; each time
// the timer fires, the runtime runs beat in a goroutine of its own, which
// decides and then re-arms the timer:
//
//   - the peer was heard and the server wrote within the interval: the
//     socket is busy and needs no ping; check again an interval after the
//     older of the two;
//   - otherwise ping with coder/websocket's Ping, which writes the ping and
//     waits for its pong, at most KeepAliveTimeout;
//   - no pong, but bytes were read from the peer after the ping, or a write
//     that holds the socket is still moving bytes to a slow reader: the
//     peer is alive;
//   - otherwise the peer is gone, and the connection is aborted.
//
// So an idle socket has no goroutine, and a ping has one goroutine for as
// long as it is outstanding. The timer is only re-armed by its own
// callback: moving a timer that is still in the runtime's heap makes the
// runtime rescan the heap, which does not scale to many sockets (see
// docs/design.md).
//
// Ping only sees its pong while someone reads the socket (its documented
// rule), so handlers must keep reading: a socket nobody reads loses the
// keep-alive, as a peer that never answers would.
type heartbeat struct {
	c                 *Conn
	interval, timeout time.Duration // timeout 0 (never negative): pings without a deadline

	// pending is when a ping that failed before its deadline started,
	// and outAtPing the bytes written then; zero when no ping is
	// unanswered. Only beat uses them, and beats never overlap.
	pending   time.Duration
	outAtPing int64

	mu      sync.Mutex // guards timer and stopped
	timer   *time.Timer
	stopped bool
}

// startHeartbeat arms c's keep-alive, unless interval is not positive or
// the connection is closed already.
func (c *Conn) startHeartbeat(interval, timeout time.Duration) {
	if interval <= 0 {
		return
	}
	h := &c.hb
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.stopped {
		return // the socket ended already
	}
	h.c, h.interval, h.timeout = c, interval, timeout
	h.timer = time.AfterFunc(interval, h.run)
}

// stop ends the keep-alive, armed or not; a beat in progress ends by
// itself, as its Ping fails once the connection is closed.
func (h *heartbeat) stop() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.stopped = true
	if h.timer != nil {
		h.timer.Stop()
	}
}

// run is the timer's callback. The middleware's goroutine count holds it
// while it runs, so that Shutdown waits for it; the socket's own count is
// held until stop, so adding to it here is safe.
func (h *heartbeat) run() {
	h.mu.Lock()
	if h.stopped {
		h.mu.Unlock()
		return
	}
	wg := &h.c.m.goroutines
	wg.Add(1)
	h.mu.Unlock()
	defer wg.Done()

	next := h.beat()
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.stopped && next > 0 {
		h.timer.Reset(next)
	}
}

// beat decides what the socket needs now, and returns when to look again
// (0: never, the socket is done).
func (h *heartbeat) beat() time.Duration {
	nc := h.c.nc
	now := monotime()
	if h.pending != 0 {
		return h.judge(now)
	}
	lastRead := time.Duration(nc.lastRead.Load())
	lastWrite := time.Duration(nc.lastWrite.Load())
	if due := min(lastRead, lastWrite) + h.interval - now; due > 0 {
		return due // busy both ways: no ping needed yet
	}

	h.outAtPing = nc.bytesOut.Load()
	wait := cmp.Or(h.timeout, h.interval) // pings without a deadline: wait at most until the next
	h.c.m.stats.pingsSent.Add(1)
	// The ping holds the socket's end: coder/websocket closes the
	// connection when a ping's write times out, before Ping returns, and
	// the keep-alive is the one to say why.
	h.c.begin()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	err := h.c.Conn.Ping(ctx)
	cancel()
	next := time.Duration(0)
	switch {
	case err == nil:
		next = h.interval
	case nc.broke.Load():
		h.c.release(err, "write") // the connection broke: lost
		return 0
	case nc.isClosed() && !errors.Is(err, context.DeadlineExceeded):
		// closed by someone else, who said why
	case h.timeout <= 0 && !nc.isClosed():
		next = h.interval // pings without a deadline
	case h.timeout <= 0:
		// coder/websocket bounds the write of a ping (five seconds) and
		// closes the connection when it is exceeded: the peer stopped
		// reading, whatever the deadline says.
		h.expire()
	default:
		// No pong in time; the ping's write may also have timed out, and
		// coder/websocket then closed the connection: judge says which.
		h.pending = now
		next = h.judge(monotime())
	}
	h.c.release(nil, "")
	return next
}

// judge decides about a ping that got no pong: it started at h.pending.
func (h *heartbeat) judge(now time.Duration) time.Duration {
	nc := h.c.nc
	switch {
	case time.Duration(nc.lastRead.Load()) > h.pending:
		// Heard after the ping: its pong may be queued behind a large
		// message, but the peer is alive.
		h.pending = 0
		return h.interval
	case nc.writes.Load() > 0 && nc.bytesOut.Load() != h.outAtPing:
		// The ping waits behind a large message that a slow reader is
		// still receiving: alive. That write's own context bounds it.
		h.pending = 0
		if ce := h.c.m.cfg.log.Check(zap.DebugLevel, "websocket keep-alive: ping deferred behind a slow write"); ce != nil {
			ce.Write(zap.String(keyRoute, h.c.req.route), zap.String(keyRemoteAddr, h.c.req.remoteAddr))
		}
		return h.interval
	}
	if left := h.pending + h.timeout - now; left > 0 && !nc.isClosed() {
		// Ping failed early (a close frame was already sent, say): the
		// peer still has until the deadline.
		return left
	}
	h.expire()
	return 0
}

// expire aborts a socket whose peer sent nothing for KeepAliveTimeout after
// a ping and made no progress reading. When another cause was recorded
// (coder/websocket sent 1009 and waits for a close frame that never comes,
// or Shutdown's 1001 handshake is under way), the abort still ends the
// wait; only the count and the log are the keep-alive's own.
func (h *heartbeat) expire() {
	c := h.c
	if c.decide(ErrKeepAliveTimeout, websocket.StatusAbnormalClosure, "keep-alive timeout") {
		c.m.stats.keepAliveTimeouts.Add(1)
		if ce := c.m.cfg.log.Check(zap.InfoLevel, "websocket keep-alive timeout; aborting"); ce != nil {
			ce.Write(c.logFields(
				zap.Duration(keyKeepAlive, h.interval),
				zap.Duration(keyKeepAliveTimeout, h.timeout),
				zap.Duration(keyDuration, time.Since(c.start)),
			)...)
		}
	}
	_ = c.abort(ErrKeepAliveTimeout, "keep-alive timeout")
}
