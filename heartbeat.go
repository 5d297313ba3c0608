package chiws

import (
	"context"
	"errors"
	"time"

	"github.com/coder/websocket"
	"go.uber.org/zap"
)

// Keep-alive design. Each socket with keep-alive has one runtime timer
// (time.AfterFunc) and, while it is idle, no goroutine. Each time the timer
// fires, the runtime runs keepAlive in a fresh goroutine, which decides
// and re-arms the timer:
//
//   - the peer was heard since the last ping (kaWaiting is clear) and a
//     ping is due: write a ping and end as soon as it is written;
//   - nothing was read from the peer since the ping and KeepAliveTimeout
//     has passed: the peer is dead and the socket is aborted;
//   - otherwise wait: the timer is armed for the next ping or deadline.
//
// Any bytes read from the peer after a ping prove it alive: netConn.Read
// clears kaWaiting (a pong is the usual such bytes, but a data message is
// as good a sign of life). That is one atomic store: the timer is only
// ever re-armed by its own callback, after it fired. Go's runtime keeps
// timers in a heap per P, and moving a timer that is still in the heap
// marks it modified, which makes the runtime scan the whole heap
// (timers.adjust) once the modified time comes: with a pong moving 19,000
// timers a second, that scan took over half the process's CPU.
//
// So a healthy socket costs one short goroutine per ping (two when
// KeepAliveTimeout is shorter than KeepAliveInterval: the deadline is
// checked in its own run), and no goroutine waits for a pong.
//
// coder/websocket's Ping writes the ping and then waits for its pong. The
// context passed to it, pingContext, is done once the ping is on the wire
// (see pingContext), which makes Ping return without waiting. When the
// hijack bypassed netConn (see accepted), chiws sees neither writes nor
// reads: Ping then waits for the pong within the deadline, as a goroutine
// per ping in flight, and the pong counts as heard. A ping that cannot be
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
	// The first ping is an interval after the accept, as if one had been
	// answered then. keepAlive takes s.mu first, so it finds s.timer set.
	s.kaSent = monotime()
	s.timer = time.AfterFunc(s.interval, s.keepAlive)
}

// keepAlive runs in a goroutine of its own each time the timer fires. It
// re-arms the timer, which is not in the runtime's heap then (see the
// design above).
func (s *socket) keepAlive() {
	now := monotime()
	s.mu.Lock()
	if s.closed.Load() {
		s.mu.Unlock()
		return
	}
	deferred := false
	if s.kaWaiting.Load() && s.slowWrite() {
		s.kaWaiting.Store(false) // alive: reading a large message, slowly
		deferred = true
	}
	if s.kaWaiting.Load() { // nothing from the peer since the last ping
		if left := s.kaSent + s.timeout - now; left > 0 {
			s.timer.Reset(min(s.interval, left))
			s.mu.Unlock()
			return
		}
		s.mu.Unlock()
		s.keepAliveTimeout()
		return
	}
	if next := s.kaSent + s.interval; now < next || s.kaPinging {
		// The peer answered before the deadline, and the next ping is
		// due later; or the last ping is still waiting to be written.
		d := next - now
		if s.kaPinging {
			d = s.interval
		}
		s.timer.Reset(d)
		s.mu.Unlock()
		if deferred {
			s.logDeferred()
		}
		return
	}
	s.kaSent = now
	s.kaPinging = true
	if s.timeout > 0 {
		s.kaWaiting.Store(true)
		s.kaOut = s.nc.bytesOut.Load() // wrote updates it once the ping is out
		s.timer.Reset(min(s.interval, s.timeout))
	} else {
		s.timer.Reset(s.interval) // unsolicited pings: no deadline
	}
	direct := s.nc.hijacked()
	if direct {
		s.pingDone = make(chan struct{})
		s.pingState.Store(pingArmed)
	}
	s.mu.Unlock()
	if deferred {
		s.logDeferred()
	}

	var err error
	if direct {
		err = s.conn.Conn.Ping((*pingContext)(s))
	} else {
		// The hijack bypassed netConn (see accepted): reads and writes are
		// not seen, so Ping waits for the pong, within the deadline.
		wait := s.timeout
		if wait <= 0 {
			wait = s.interval / 2 // done before the next ping is due
		}
		ctx, cancel := context.WithTimeout(context.Background(), wait)
		err = s.conn.Conn.Ping(ctx)
		cancel()
	}

	s.mu.Lock()
	s.kaPinging = false
	s.pingState.Store(pingIdle)
	s.pingDone = nil // 96 bytes per socket between pings
	s.mu.Unlock()
	s.pingEnded(err, direct)
}

// pingEnded accounts for the end of Ping: err is its error, direct says
// whether it ran with pingContext (see keepAlive).
func (s *socket) pingEnded(err error, direct bool) {
	switch {
	case err == nil: // Ping waited for the pong (without netConn)
		s.m.stats.pingsSent.Add(1)
		s.kaWaiting.Store(false)
	case errors.Is(err, context.DeadlineExceeded):
		// Not written within coder/websocket's five seconds, even if
		// pingContext's Done closed early (see wrote); or, without
		// netConn, no pong within the wait.
		if !direct {
			// Without netConn, a ping that was written and one that was
			// not look alike; count it, as pings to a silent peer are.
			s.m.stats.pingsSent.Add(1)
		}
		s.pingStuck()
	case errors.Is(err, context.Canceled):
		// pingContext's Err: Ping only looks at it once its write
		// succeeded.
		s.m.stats.pingsSent.Add(1)
	}
	// Otherwise the socket closed; whoever closed it said why.
}

// slowWrite reports whether a write to the peer is in progress and has
// moved bytes since the ping was written (or since the ping started, when
// it could not be written): the peer is reading, slowly, a message large
// enough to hold coder/websocket's write lock, and the ping behind it.
// That write's own context bounds it. s.mu must be held.
func (s *socket) slowWrite() bool {
	return s.nc.writes.Load() > 0 && s.nc.bytesOut.Load() != s.kaOut && !s.nc.connClosed.Load()
}

// pingStuck runs when coder/websocket gave up writing the ping after five
// seconds (or, without netConn, the pong did not come within the
// deadline). Behind a slow write that makes progress, the peer is alive:
// it counts as heard, and the next ping is due an interval after this one.
// Otherwise the deadline decides.
func (s *socket) pingStuck() {
	s.mu.Lock()
	deferred := s.kaWaiting.Load() && !s.closed.Load() && s.slowWrite()
	if deferred {
		s.kaWaiting.Store(false)
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

// keepAliveTimeout aborts a socket whose peer sent nothing for
// KeepAliveTimeout after a ping, and made no progress reading.
func (s *socket) keepAliveTimeout() {
	// No pong, no data, no progress: the peer is gone. When the close was
	// already recorded (coder/websocket sent 1009 or 1002 and waits for
	// the peer's close frame, or Shutdown's 1001 handshake is under way),
	// the abort still ends the wait; only the count and the log are the
	// keep-alive's own.
	if s.setClose(websocket.StatusAbnormalClosure, "keep-alive timeout", closedByKeepAlive) {
		s.m.stats.keepAliveTimeouts.Add(1)
		if ce := s.m.cfg.log.Check(zap.InfoLevel, "websocket keep-alive timeout; aborting"); ce != nil {
			ce.Write(append(requestFields(s.req),
				zap.Duration(keyKeepAlive, s.interval),
				zap.Duration(keyKeepAliveTimeout, s.timeout),
				zap.Duration(keyDuration, monotime()-s.start),
			)...)
		}
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
// connection, so that Ping returns then instead of waiting for the pong.
// Ping returns context.Canceled only after its write succeeded: a write
// that failed returns its own error (DeadlineExceeded after five seconds),
// whatever pingContext's state, which is how keepAlive tells them apart.
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
// precedes it), Done closes. Closing early, on another writer's bytes, is
// harmless: Ping's write has its own context, Ping only looks at Done once
// its write succeeded, and a ping that then fails to be written fails
// with its own error. slowWrite counts progress from here.
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
