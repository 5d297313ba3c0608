package chiws

import (
	"context"
	"maps"
	"slices"
	"sync"

	"github.com/coder/websocket"
	"go.uber.org/zap"
)

// register adds a socket (counted in m.goroutines until it ends), unless
// Shutdown began.
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

func (m *Middleware) shuttingDown() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.closing
}

func (m *Middleware) unregister(c *Conn) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	_, ok := m.sockets[c]
	delete(m.sockets, c)
	return ok
}

// Shutdown closes every open socket with 1001 Going Away (each close bounded
// by Options.CloseTimeout), refuses new ones with 503, and waits for every
// WebSocket handler and keep-alive goroutine. When ctx ends first, it aborts
// all sockets at once and returns ctx.Err(), no longer waiting for
// handlers. Nothing of the middleware runs or logs after it returns. It
// may be called more than once; ordinary requests keep flowing.
// http.Server.Shutdown neither closes nor waits for hijacked connections,
// and waits for HTTP/2 streams: start Shutdown with the server's:
//
//	drained := make(chan error, 1)
//	srv.RegisterOnShutdown(func() { drained <- ws.Shutdown(ctx) })
//	err := errors.Join(srv.Shutdown(ctx), <-drained)
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

	// Shutdown owns and waits for one close handshake goroutine per socket
	// (bounded by CloseTimeout); when ctx ends first, every socket is
	// aborted, which also ends those handshakes and stuck writes.
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
	// Every socket is closed: keep-alive goroutines left fail their Ping.
	m.goroutines.Wait()
	if err != nil {
		// Running handlers will not log their sockets' close after we return.
		for _, c := range socks {
			c.logClose(nil)
		}
		m.cfg.log.Warn("websocket shutdown incomplete: handlers still running", zap.Error(err))
	}
	return err
}
