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

// heartbeat is a socket's keep-alive: one runtime timer, whose callback
// calls beat and re-arms it (only it: moving a timer still in the runtime's
// heap does not scale, docs/design.md), so an idle socket has no goroutine.
// Ping sees its pong only while someone reads the socket.
type heartbeat struct {
	c                 *Conn
	interval, timeout time.Duration // timeout 0 (never negative): pings without a deadline

	// in, out: the counters at the last look; pending: an unanswered
	// ping's start. Only beat uses them; beats never overlap.
	in, out int64
	pending time.Time

	mu      sync.Mutex // guards timer and stopped
	timer   *time.Timer
	stopped bool
}

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

func (h *heartbeat) stop() { // a beat under way fails its Ping and ends
	h.mu.Lock()
	defer h.mu.Unlock()
	h.stopped = true
	if h.timer != nil {
		h.timer.Stop()
	}
}

// run is the timer's callback, counted in m.goroutines for Shutdown.
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

// beat pings a socket not both read and written since the last look, and
// returns when to look again (0: never).
func (h *heartbeat) beat() time.Duration {
	nc := h.c.nc
	now := time.Now()
	if !h.pending.IsZero() {
		return h.judge()
	}
	in, out := nc.bytesIn.Load(), nc.bytesOut.Load()
	busy := in != h.in && out != h.out
	h.in, h.out = in, out
	if busy {
		return h.interval
	}

	wait := cmp.Or(h.timeout, h.interval) // pings without a deadline: wait at most until the next
	h.c.m.stats.pingsSent.Add(1)
	// Hold the socket's end: coder/websocket closes the connection when a
	// ping's write times out, before Ping returns, and we must say why.
	h.c.begin()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	err := h.c.Conn.Ping(ctx)
	cancel()
	next := time.Duration(0)
	switch {
	case err == nil:
		next = h.interval
		h.in, h.out = nc.bytesIn.Load(), nc.bytesOut.Load() // the ping and pong are no traffic
	case nc.broke.Load():
		h.c.release(nil, err, "write") // the connection broke: lost
		return 0
	case nc.isClosed() && !errors.Is(err, context.DeadlineExceeded):
		// closed by someone else, who said why
	case h.timeout <= 0 && !nc.isClosed():
		next = h.interval // pings without a deadline
	case nc.isClosed():
		// coder/websocket closed the connection when the ping's write
		// exceeded its 5 s bound: the peer stopped reading.
		h.expire()
	default:
		// No pong in time (or the ping's write timed out and
		// coder/websocket closed the connection): judge says which.
		h.pending = now
		next = h.judge()
	}
	h.c.release(nil, nil, "")
	return next
}

// judge decides about an unanswered ping: bytes read since, or a write
// still moving bytes to a slow reader, prove the peer alive.
func (h *heartbeat) judge() time.Duration {
	nc := h.c.nc
	switch {
	case nc.bytesIn.Load() != h.in: // the pong may wait behind a large message
		h.pending = time.Time{}
		return h.interval
	case nc.writes.Load() > 0 && nc.bytesOut.Load() != h.out: // the ping waits behind it
		h.pending = time.Time{}
		if ce := h.c.m.cfg.log.Check(zap.DebugLevel, "websocket keep-alive: ping deferred behind a slow write"); ce != nil {
			ce.Write(zap.String(keyRoute, h.c.req.route), zap.String(keyRemoteAddr, h.c.req.remoteAddr))
		}
		return h.interval
	}
	if left := h.timeout - time.Since(h.pending); left > 0 && !nc.isClosed() {
		return left // the ping failed early (a close frame went out, say)
	}
	h.expire()
	return 0
}

// expire aborts a socket whose peer is gone (after another cause, it only
// ends that close's wait).
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
