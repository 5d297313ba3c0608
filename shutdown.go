package chiws

import (
	"context"
	"sync"

	"github.com/coder/websocket"
	"go.uber.org/zap"
)

// socketList is an intrusive doubly linked list of accepted sockets: adding
// and removing cost no allocation. It is guarded by Middleware.mu.
type socketList struct {
	head *socket
	len  int
}

func (l *socketList) push(s *socket) {
	s.next = l.head
	if l.head != nil {
		l.head.prev = s
	}
	l.head = s
	l.len++
}

func (l *socketList) remove(s *socket) {
	if s.prev != nil {
		s.prev.next = s.next
	} else if l.head == s {
		l.head = s.next
	} else {
		return // not in the list
	}
	if s.next != nil {
		s.next.prev = s.prev
	}
	s.prev, s.next = nil, nil
	l.len--
}

func (l *socketList) snapshot() []*socket {
	out := make([]*socket, 0, l.len)
	for s := l.head; s != nil; s = s.next {
		out = append(out, s)
	}
	return out
}

// register adds an accepted socket; it fails once Shutdown began.
func (m *Middleware) register(s *socket) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closing || s.closed.Load() {
		return !m.closing
	}
	m.sockets.push(s)
	return true
}

func (m *Middleware) unregister(s *socket) {
	m.mu.Lock()
	m.sockets.remove(s)
	m.mu.Unlock()
}

// Shutdown closes every open socket with 1001 Going Away, refuses new ones
// with 503, and waits until every WebSocket handler has returned. When ctx
// ends first, the remaining sockets are closed without a handshake and
// Shutdown returns ctx.Err().
//
// http.Server.Shutdown neither closes nor waits for hijacked connections,
// WebSockets included, so call both, the server first:
//
//	err := srv.Shutdown(ctx)                 // no new requests
//	err = errors.Join(err, ws.Shutdown(ctx)) // drain the sockets
//
// http.Server.RegisterOnShutdown also works for starting the drain at the
// same moment, but the server does not wait for what it registers: keep
// the returned error and the wait with a direct call, as above.
//
//	srv.RegisterOnShutdown(func() { drained <- ws.Shutdown(ctx) })
//
// Shutdown may be called more than once; ordinary requests keep flowing
// through the middleware.
func (m *Middleware) Shutdown(ctx context.Context) error {
	m.mu.Lock()
	m.closing = true
	socks := m.sockets.snapshot()
	var drained chan struct{}
	if m.inflight > 0 {
		if m.drained == nil {
			m.drained = make(chan struct{})
		}
		drained = m.drained
	}
	m.mu.Unlock()
	m.cfg.log.Info("websocket shutdown: closing sockets", zap.Int(keySockets, len(socks)))

	// One goroutine per socket, owned by Shutdown, which waits for all of
	// them below: each ends when its close handshake ends (coder/websocket
	// bounds it to 10 s) or when abort cuts it short.
	var wg sync.WaitGroup
	for _, s := range socks {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.closeWith(websocket.StatusGoingAway, "server shutting down", closedByShutdown)
		}()
	}
	closed := make(chan struct{})
	go func() { // owned by Shutdown, which receives from closed
		wg.Wait()
		close(closed)
	}()

	var err error
	select {
	case <-closed:
	case <-ctx.Done():
		for _, s := range socks {
			s.abort()
		}
		<-closed
		err = ctx.Err()
	}
	if drained != nil && err == nil {
		select {
		case <-drained:
		case <-ctx.Done():
			err = ctx.Err()
		}
	}
	if err != nil {
		m.cfg.log.Warn("websocket shutdown incomplete", zap.Error(err))
	}
	return err
}
