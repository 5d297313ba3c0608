package chiws

import (
	"context"
	"maps"
	"slices"
	"sync"

	"github.com/coder/websocket"
	"go.uber.org/zap"
)

// register adds an accepted socket to the registry; it fails once Shutdown
// began. The socket holds a count in m.goroutines until it ends (see
// Conn.ending).
func (m *Middleware) register(c *Conn) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closing {
		return false
	}
	m.goroutines.Add(1)
	m.sockets[c] = struct{}{}
	return true
}

// shuttingDown reports whether Shutdown was called.
func (m *Middleware) shuttingDown() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.closing
}

// unregister removes a socket and reports whether it was registered.
func (m *Middleware) unregister(c *Conn) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	_, ok := m.sockets[c]
	delete(m.sockets, c)
	return ok
}

// Shutdown closes every open socket with 1001 Going Away, refuses new ones
// with 503, and waits until every WebSocket handler has returned and every
// keep-alive goroutine has ended. When ctx ends first, the sockets are
// aborted (closed without a handshake; an HTTP/2 stream is reset), all at
// once, and Shutdown returns ctx.Err() as soon as they are closed; a
// handler that is still running then is no longer waited for. Nothing of
// the middleware runs or logs after Shutdown returns, except for handlers
// that outlive it.
//
// http.Server.Shutdown neither closes nor waits for hijacked HTTP/1.1
// connections, and it waits for HTTP/2 streams, WebSockets included. Start
// Shutdown with the server's, which drains both kinds:
//
//	drained := make(chan error, 1)
//	srv.RegisterOnShutdown(func() { drained <- ws.Shutdown(ctx) })
//	err := errors.Join(srv.Shutdown(ctx), <-drained)
//
// Shutdown may be called more than once; ordinary requests keep flowing
// through the middleware.
func (m *Middleware) Shutdown(ctx context.Context) error {
	m.mu.Lock()
	m.closing = true
	socks := slices.Collect(maps.Keys(m.sockets))
	var drained chan struct{}
	if m.inflight > m.foreign {
		if m.drained == nil {
			m.drained = make(chan struct{})
		}
		drained = m.drained
	}
	m.mu.Unlock()
	m.cfg.log.Info("websocket shutdown: closing sockets", zap.Int(keySockets, len(socks)))

	// One goroutine per socket, owned by Shutdown, which waits for all of
	// them below: each performs the close handshake, bounded by
	// Options.CloseTimeout. When ctx ends first, every socket is aborted,
	// which also ends the handshakes under way and a write its handler is
	// stuck in.
	var closers sync.WaitGroup
	for _, c := range socks {
		closers.Go(func() { _ = c.shut(ErrShuttingDown, websocket.StatusGoingAway, "server shutting down") })
	}
	aborted := make(chan struct{})
	stop := context.AfterFunc(ctx, func() { // waited for below
		defer close(aborted)
		var wg sync.WaitGroup
		for _, c := range socks {
			wg.Go(func() { _ = c.abort(ErrShuttingDown, "") }) // owned by this function, which waits
		}
		wg.Wait()
	})
	closers.Wait()

	var err error
	if drained != nil {
		select {
		case <-drained:
		case <-ctx.Done():
		}
	}
	if !stop() {
		<-aborted // ctx ended: the sockets were aborted
		err = ctx.Err()
	}
	// Every registered socket is closed now; what is left of
	// m.goroutines are keep-alive goroutines, whose Ping fails at once on
	// a closed connection.
	m.goroutines.Wait()
	if err != nil {
		// Handlers still running will not log their sockets' close after
		// Shutdown returns: log it now.
		for _, c := range socks {
			c.logClose(nil)
		}
		m.cfg.log.Warn("websocket shutdown incomplete: handlers still running", zap.Error(err))
	}
	return err
}
