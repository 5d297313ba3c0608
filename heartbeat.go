package chiws

import (
	"context"
	"errors"
	"math"
	"time"

	"github.com/coder/websocket"
	"go.uber.org/zap"
)

// Keep-alive design. Each socket with keep-alive has one runtime timer
// (time.AfterFunc) and, while it is idle, no goroutine. The timer has two
// jobs, told apart by kaWaiting:
//
//   - a ping is due: the runtime runs keepAlive in a fresh goroutine, which
//     writes a ping, points the timer at the ping's deadline
//     (KeepAliveTimeout) and ends as soon as the ping is written;
//   - the deadline passed: nothing arrived from the peer since the ping,
//     so the peer is declared dead and the socket aborted.
//
// Any bytes read from the peer after a ping prove it alive: netConn.Read
// calls heard, which points the timer at the next ping (a pong is the
// usual such bytes, but a data message is as good a sign of life). So a
// healthy socket costs one short goroutine per ping, and no goroutine
// waits for a pong.
//
// coder/websocket's Ping writes the ping and then waits for its pong. The
// context passed to it, pingContext, is done once the ping is on the wire
// (see pingContext), which makes Ping return without waiting; the pong is
// then seen by heard. When the hijack bypassed netConn (see accepted),
// chiws sees neither writes nor reads: Ping then waits for the pong within
// the deadline, as a goroutine per ping in flight. A ping that cannot be
// written within coder/websocket's five seconds, behind a large message
// to a slow reader, is handled by pingStuck.
//
// coder/websocket only reads the socket while a goroutine reads it, so a
// handler must keep reading (Read, Reader, or CloseRead for write-only
// sockets). A handler that never reads loses its socket to the keep-alive:
// that is documented, and it is what happens with a peer that never
// answers, which the server cannot tell apart.

// startKeepAlive arms the socket's timer.
func (s *socket) startKeepAlive() {
	if s.interval <= 0 {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed.Load() {
		return
	}
	// Created stopped and armed under the lock, so that keepAlive always
	// finds s.timer set.
	s.timer = time.AfterFunc(math.MaxInt64, s.keepAlive)
	s.schedule(monotime(), s.interval)
}

// schedule points the timer at now+d (monotime). s.mu must be held.
func (s *socket) schedule(now, d time.Duration) {
	s.kaDue = now + d
	s.timer.Reset(d)
}

// keepAlive runs in a goroutine of its own each time the timer fires.
func (s *socket) keepAlive() {
	now := monotime()
	s.mu.Lock()
	if s.closed.Load() || now < s.kaDue {
		// Closed, or a stale run: the timer was reset after this run
		// began (heard moved it).
		s.mu.Unlock()
		return
	}
	if s.kaWaiting.Load() {
		s.pingDeadline() // unlocks s.mu
		return
	}
	if s.kaPinging {
		// The last ping is still waiting to be written, behind a large
		// message to a slow reader (see pingStuck); try again later.
		s.schedule(now, s.interval)
		s.mu.Unlock()
		return
	}
	s.kaPinging = true
	if s.timeout > 0 {
		s.kaWaiting.Store(true)
		s.kaOut = s.nc.bytesOut.Load() // wrote updates it once the ping is out
		s.schedule(now, s.timeout)     // kaDue - timeout is when the ping started
	} else {
		s.schedule(now, s.interval) // unsolicited pings: no deadline
	}
	direct := s.nc.hijacked()
	if direct {
		s.pingDone = make(chan struct{})
		s.pingState.Store(pingArmed)
	}
	s.mu.Unlock()

	var err error
	if direct {
		err = s.conn.Conn.Ping((*pingContext)(s))
	} else {
		// The hijack bypassed netConn (see accepted): reads and writes are
		// not seen, so Ping waits for the pong, within the deadline.
		wait := s.timeout
		if wait <= 0 {
			wait = s.interval
		}
		ctx, cancel := context.WithTimeout(context.Background(), wait)
		err = s.conn.Conn.Ping(ctx)
		cancel()
	}

	s.mu.Lock()
	written := s.pingState.Load() == pingWritten
	s.kaPinging = false
	s.pingState.Store(pingIdle)
	s.pingDone = nil // 96 bytes per socket between pings
	s.mu.Unlock()
	switch {
	case err == nil: // Ping waited for the pong (without netConn)
		s.m.stats.pingsSent.Add(1)
		s.heard()
	case written:
		s.m.stats.pingsSent.Add(1)
	case errors.Is(err, context.DeadlineExceeded):
		if !direct {
			// Without netConn, a ping that was written and one that was
			// not look alike; count it, as pings to a silent peer are.
			s.m.stats.pingsSent.Add(1)
		}
		s.pingStuck()
	}
	// Otherwise the socket closed; whoever closed it said why.
}

// heard is called by netConn.Read when bytes arrived from the peer while
// the keep-alive waits for a sign of life: the next ping is due an
// interval after the last one.
func (s *socket) heard() {
	now := monotime()
	s.mu.Lock()
	if s.kaWaiting.Load() && !s.closed.Load() {
		s.kaWaiting.Store(false)
		sent := s.kaDue - s.timeout
		s.schedule(now, max(sent+s.interval-now, 0))
	}
	s.mu.Unlock()
}

// slowWrite reports whether a write to the peer is in progress and has
// moved bytes since the ping was written (or since the ping started, when
// it could not be written): the peer is reading, slowly, a message large
// enough to hold coder/websocket's write lock, and the ping behind it.
// s.mu must be held.
func (s *socket) slowWrite() bool {
	return s.nc.writes.Load() > 0 && s.nc.bytesOut.Load() != s.kaOut && !s.nc.connClosed.Load()
}

// pingStuck runs when coder/websocket gave up writing the ping after five
// seconds (or, without netConn, the pong did not come within the
// deadline). Behind a slow write that makes progress, the peer is alive:
// the deadline moves to the next interval, and that write's own context
// bounds it. Otherwise the deadline, already armed, decides.
func (s *socket) pingStuck() {
	s.mu.Lock()
	deferred := s.kaWaiting.Load() && !s.closed.Load() && s.slowWrite()
	if deferred {
		s.kaWaiting.Store(false)
		s.schedule(monotime(), s.interval)
	}
	s.mu.Unlock()
	if deferred {
		s.logDeferred()
	}
}

func (s *socket) logDeferred() {
	if ce := s.m.cfg.log.Check(zap.DebugLevel, "websocket keep-alive ping deferred: a slow write is in progress"); ce != nil {
		ce.Write(zap.String(keyRoute, routeOf(s.req)), zap.String(keyRemoteAddr, clip(s.req.RemoteAddr)))
	}
}

// pingDeadline runs when KeepAliveTimeout passed after a ping and nothing
// was read from the peer since (that would have called heard). It is
// called with s.mu held and unlocks it. A slow write in progress keeps the
// peer alive (see slowWrite); a peer that reads nothing makes no progress
// and is declared dead.
func (s *socket) pingDeadline() {
	alive := s.slowWrite()
	if alive {
		s.kaWaiting.Store(false)
		s.schedule(monotime(), s.interval)
	}
	s.mu.Unlock()
	if alive {
		s.logDeferred()
		return
	}
	// No pong, no data, no progress: the peer is gone.
	if !s.setClose(websocket.StatusAbnormalClosure, "keep-alive timeout", closedByKeepAlive) {
		return
	}
	s.m.stats.keepAliveTimeouts.Add(1)
	if ce := s.m.cfg.log.Check(zap.InfoLevel, "websocket keep-alive timeout; aborting"); ce != nil {
		ce.Write(append(requestFields(s.req),
			zap.Duration(keyKeepAlive, s.interval),
			zap.Duration(keyKeepAliveTimeout, s.timeout),
			zap.Duration(keyDuration, monotime()-s.start),
		)...)
	}
	s.abort()
}

// Ping context states (socket.pingState).
const (
	pingIdle       int32 = iota
	pingArmed            // keepAlive is about to call Ping
	pingRegistered       // Ping derived its write context from pingContext
	pingWritten          // the ping is on the wire; pingDone is closed
)

// pingContext is the context keepAlive passes to coder/websocket's Ping.
// It is done (context.Canceled) once the ping has been written to the
// connection, so that Ping returns then instead of waiting for the pong;
// keepAlive tells this from a failure by the state, pingWritten.
//
// Ping derives a context with a five-second timeout from it for the write
// (context.WithTimeout). The context package attaches that child through
// AfterFunc (pingArmed to pingRegistered), and pingContext never runs the
// function: the write's own context is never cancelled by this one, only
// by its timeout or when Ping ends. This matters: coder/websocket closes
// the connection when a write's context ends mid-write. Done closes when
// netConn.Write returns after the child was attached (wrote).
//
// This relies on how coder/websocket v1.8 derives the write context and on
// how the context package attaches children to a parent it does not know.
// TestPingContextMechanics and TestKeepAlivePingDoesNotWaitForPong pin
// both, so that a dependency or toolchain update that changes either fails
// the tests instead of the keep-alive.
type pingContext socket

func (c *pingContext) Deadline() (time.Time, bool) { return time.Time{}, false }

// Done is read by Ping's goroutine only, which set pingDone.
func (c *pingContext) Done() <-chan struct{} { return c.pingDone }
func (c *pingContext) Value(any) any         { return nil }
func (c *pingContext) String() string        { return "chiws keep-alive ping" }
func (c *pingContext) Err() error {
	select {
	case <-c.pingDone:
		return context.Canceled
	default:
		return nil
	}
}

// AfterFunc is how context.WithTimeout attaches Ping's write context (see
// pingContext). f is never called.
func (c *pingContext) AfterFunc(func()) (stop func() bool) {
	c.pingState.CompareAndSwap(pingArmed, pingRegistered)
	return stopNothing
}

func stopNothing() bool { return true }

// wrote is called by netConn.Write after bytes went out: if they may be
// the ping (any write after the child was attached is the ping, or
// precedes it), Done closes. Closing early is harmless: Ping's write has
// its own context, and Ping only looks at Done once the ping is written.
// The ping's bytes are then out: slowWrite counts progress from here.
func (s *socket) wrote() {
	if s.pingState.Load() != pingRegistered {
		return
	}
	s.mu.Lock()
	if s.pingState.CompareAndSwap(pingRegistered, pingWritten) {
		close(s.pingDone)
		s.kaOut = s.nc.bytesOut.Load()
	}
	s.mu.Unlock()
}

var _ context.Context = (*pingContext)(nil)
