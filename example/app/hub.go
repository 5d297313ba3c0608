package app

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/chiws/chiws"
	"github.com/coder/websocket"
	"go.uber.org/zap"
)

// Defaults for HubOptions.
const (
	// DefaultMemberQueue is how many messages may wait for one member.
	DefaultMemberQueue = 32

	// DefaultWriteTimeout bounds one write to one member.
	DefaultWriteTimeout = 10 * time.Second
)

// ErrHubStopped is returned by Join once Stop has been called.
var ErrHubStopped = errors.New("broadcast hub stopped")

// HubOptions configures a Hub.
type HubOptions struct {
	// Queue is the number of messages buffered for each member. When a
	// message arrives and a member's queue is full, that member is dropped
	// from the room: the write it is stuck in is cancelled, which aborts
	// the socket (a close frame could not get through a peer that stopped
	// reading anyway), or, if the writer just caught up, the socket is
	// closed with 1008 Policy Violation "too slow". The other members never
	// wait for it. Zero means DefaultMemberQueue.
	Queue int

	// WriteTimeout bounds each write to a member; a member whose write
	// exceeds it is disconnected without a close handshake (the peer is
	// not reading, so a close frame would not get through either). Zero
	// means DefaultWriteTimeout.
	WriteTimeout time.Duration

	// Logger receives membership changes at Debug and dropped members at
	// Info. Nil means no logs.
	Logger *zap.Logger
}

// Hub is a broadcast room: every message a member sends is written to all
// members, the sender included, with its type. It is the Go form of the
// reference's background service: the hub, not the HTTP handler, owns the
// sockets, and the handler waits (Conn.Wait) until the hub is done.
//
// Goroutines: Run is the hub's only long-lived goroutine and the sole owner
// of the member set. Each member has a reader and a writer goroutine,
// started by Run and waited for by Stop.
type Hub struct {
	queue        int
	writeTimeout time.Duration
	log          *zap.Logger

	join    chan *member
	leave   chan *member
	inbox   chan message
	stop    chan struct{} // closed by Stop
	done    chan struct{} // closed when Run returns
	members sync.WaitGroup
	once    sync.Once

	// count is the number of members, for tests and metrics.
	mu    sync.Mutex
	count int
}

type message struct {
	typ  websocket.MessageType
	data []byte
}

// member is one socket in the room.
type member struct {
	conn  *chiws.Conn
	ctx   context.Context    // the writes' context; cancelled to drop a stuck member
	drop  context.CancelFunc // called by Run (slow member) and by write on exit
	queue chan message       // written only by Run, without blocking
	quit  chan struct{}      // closed by Run when the member leaves the room
	code  websocket.StatusCode
	why   string
}

// NewHub returns a stopped-until-Run hub. Call Run in a goroutine and Stop
// when done.
func NewHub(opts HubOptions) *Hub {
	h := &Hub{
		queue:        opts.Queue,
		writeTimeout: opts.WriteTimeout,
		log:          opts.Logger,
		join:         make(chan *member),
		leave:        make(chan *member),
		inbox:        make(chan message),
		stop:         make(chan struct{}),
		done:         make(chan struct{}),
	}
	if h.queue == 0 {
		h.queue = DefaultMemberQueue
	}
	if h.writeTimeout == 0 {
		h.writeTimeout = DefaultWriteTimeout
	}
	if h.log == nil {
		h.log = zap.NewNop()
	}
	return h
}

// Join adds an accepted socket to the room. From then on the hub reads and
// writes the socket; the caller must only wait for it (c.Wait). Join fails
// with ErrHubStopped once Stop was called; the socket is then untouched.
func (h *Hub) Join(c *chiws.Conn) error {
	select {
	case <-h.stop:
		return ErrHubStopped
	default:
	}
	ctx, drop := context.WithCancel(c.Context())
	m := &member{
		conn:  c,
		ctx:   ctx,
		drop:  drop,
		queue: make(chan message, h.queue),
		quit:  make(chan struct{}),
	}
	select {
	case h.join <- m:
		return nil
	case <-h.stop:
		drop()
		return ErrHubStopped
	}
}

// Len returns the number of members.
func (h *Hub) Len() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.count
}

// Run runs the room until Stop is called. It must be called once.
func (h *Hub) Run() {
	defer close(h.done)
	members := make(map[*member]struct{})
	remove := func(m *member, code websocket.StatusCode, why string) {
		if _, ok := members[m]; !ok {
			return
		}
		delete(members, m)
		h.setCount(len(members))
		m.code, m.why = code, why
		close(m.quit) // the writer closes the socket with code and why
	}
	for {
		select {
		case m := <-h.join:
			members[m] = struct{}{}
			h.setCount(len(members))
			// Both goroutines are owned by the hub: Stop waits for them.
			// The reader ends when the socket closes; the writer when the
			// member leaves (quit) or a write fails.
			h.members.Add(2)
			go h.read(m)
			go h.write(m)
			h.log.Debug("member joined", zap.Int("members", len(members)))
		case m := <-h.leave:
			remove(m, websocket.StatusNormalClosure, "")
			h.log.Debug("member left", zap.Int("members", len(members)))
		case msg := <-h.inbox:
			for m := range members {
				select {
				case m.queue <- msg:
				default:
					// Its writer is stuck in a write: cancel it, which
					// aborts the socket; close it with 1008 otherwise.
					m.drop()
					remove(m, websocket.StatusPolicyViolation, "too slow")
					h.log.Info("dropped a slow member", zap.Int("queue", h.queue))
				}
			}
		case <-h.stop:
			for m := range members {
				remove(m, websocket.StatusGoingAway, "server shutting down")
			}
			return
		}
	}
}

func (h *Hub) setCount(n int) {
	h.mu.Lock()
	h.count = n
	h.mu.Unlock()
}

// read forwards the member's messages to the room until the socket closes,
// then tells the room the member left. It keeps reading even when nobody
// else is in the room, which also lets chiws's keep-alive see pongs.
func (h *Hub) read(m *member) {
	defer h.members.Done()
	ctx := m.conn.Context()
	for {
		typ, p, err := m.conn.Read(ctx)
		if err != nil {
			break
		}
		select {
		case h.inbox <- message{typ: typ, data: p}:
		case <-h.stop:
			return
		}
	}
	select {
	case h.leave <- m:
	case <-h.stop:
	}
}

// write is the only goroutine that writes to the member's socket.
func (h *Hub) write(m *member) {
	defer h.members.Done()
	defer m.drop()
	for {
		select {
		case <-m.quit:
			// Bounded by coder/websocket's close handshake timeouts; a
			// no-op error when the socket is already closed.
			_ = m.conn.Close(m.code, m.why)
			return
		case msg := <-m.queue:
			ctx, cancel := context.WithTimeout(m.ctx, h.writeTimeout)
			err := m.conn.Write(ctx, msg.typ, msg.data)
			cancel()
			if err != nil {
				// The reader sees the closed socket and reports the leave.
				_ = m.conn.CloseNow()
				return
			}
		}
	}
}

// Stop closes every member's socket with 1001 Going Away, stops Run and
// waits for the hub's goroutines, or until ctx is done. Run must have been
// started. It may be called more than once. When ctx ends first, Stop
// returns ctx.Err(); the remaining goroutines still end once their sockets
// have closed, which coder/websocket's close handshake timeout bounds.
func (h *Hub) Stop(ctx context.Context) error {
	h.once.Do(func() { close(h.stop) })
	all := make(chan struct{})
	go func() { // owned by Stop: ends when every member goroutine has
		<-h.done
		h.members.Wait()
		close(all)
	}()
	select {
	case <-all:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
