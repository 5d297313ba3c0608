package chiws

import (
	"context"
	"errors"
	"math"
	"time"

	"github.com/coder/websocket"
	"go.uber.org/zap"
)

// Keep-alive design: each socket with keep-alive has one runtime timer
// (time.AfterFunc), and no goroutine while it is idle. When the timer
// fires, the runtime runs keepAlive in a fresh goroutine that sends a ping
// and waits for its pong, which takes one round trip for a live peer; the
// goroutine then re-arms the timer and ends. A peer that does not answer
// within KeepAliveTimeout is declared dead and the socket aborted.
//
// coder/websocket's Ping only sees the pong while another goroutine reads
// the socket, so a handler must keep reading (Read, Reader, or CloseRead
// for write-only sockets). A handler that never reads loses its socket to
// the keep-alive: that is documented, and it is what happens with a peer
// that never answers, which the server cannot tell apart.

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
	s.timer.Reset(s.interval)
}

// rearm schedules the next ping unless the socket is closed.
func (s *socket) rearm() {
	s.mu.Lock()
	if !s.closed.Load() {
		s.timer.Reset(s.interval)
	}
	s.mu.Unlock()
}

// keepAlive runs in the timer's goroutine; it ends after one ping.
func (s *socket) keepAlive() {
	if s.closed.Load() {
		return
	}
	wait := s.timeout
	if wait <= 0 {
		// Unsolicited pings: keep the rhythm and give up waiting for the
		// pong when the next ping is due.
		s.rearm()
		wait = s.interval
	}
	sentBefore := s.nc.bytesOut.Load()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	err := s.conn.Conn.Ping(ctx)
	cancel()
	// coder/websocket gives a ping five seconds to get the write lock and
	// be written. A large message written to a slow reader can hold the
	// lock longer: when a write is in progress and bytes went out during
	// the ping's wait, the peer is reading, slowly; the ping waits for the
	// next interval and that write's own context bounds it. A peer that
	// reads nothing makes no progress, and is declared dead below.
	moved := s.nc.bytesOut.Load() != sentBefore
	if err == nil || moved || !s.nc.hijacked() {
		s.m.stats.pingsSent.Add(1)
	}
	switch {
	case s.timeout <= 0:
		return
	case err == nil:
		s.rearm()
		return
	case !errors.Is(err, context.DeadlineExceeded):
		return // closed meanwhile; whoever closed it said why
	case moved && s.nc.writes.Load() > 0 && !s.nc.connClosed.Load():
		if ce := s.m.cfg.log.Check(zap.DebugLevel, "websocket keep-alive ping deferred: a slow write is in progress"); ce != nil {
			ce.Write(zap.String(keyRoute, routeOf(s.req)), zap.String(keyRemoteAddr, clip(s.req.RemoteAddr)))
		}
		s.rearm()
		return
	}
	// The pong is late, or the ping could not even be written in time (a
	// peer that stopped reading). Either way the peer is gone.
	if !s.setClose(websocket.StatusAbnormalClosure, "keep-alive timeout", closedByKeepAlive) {
		return
	}
	s.m.stats.keepAliveTimeouts.Add(1)
	if ce := s.m.cfg.log.Check(zap.InfoLevel, "websocket keep-alive timeout; aborting"); ce != nil {
		ce.Write(append(requestFields(s.req),
			zap.Duration(keyKeepAlive, s.interval),
			zap.Duration(keyKeepAliveTimeout, s.timeout),
			zap.Duration(keyDuration, time.Since(s.start)),
		)...)
	}
	s.abort()
}
