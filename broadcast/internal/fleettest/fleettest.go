// Package fleettest runs the same tests on every broker: three hubs behind
// three httptest servers with the chiws middleware, real coder/websocket
// clients over loopback, and a broker per node on one message bus.
package fleettest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chiws/chiws"
	"github.com/chiws/chiws/broadcast"
	"github.com/chiws/chiws/internal/wstest"
	"github.com/coder/websocket"
)

// Timeout bounds every wait in these tests.
const Timeout = 20 * time.Second

// Node is one instance's side of the message bus.
type Node struct {
	Broker broadcast.Broker
	// Stop, when not nil, closes the node's side of the bus: its broker
	// connection and what it runs beside it (an embedded server). It is
	// called when the node is killed, and must tolerate a second call.
	Stop func()
}

// NewNodes returns three nodes on one message bus. It registers their
// cleanup with t.Cleanup.
type NewNodes func(t *testing.T) []Node

// Run runs the fleet tests on the nodes that newNodes returns.
func Run(t *testing.T, newNodes NewNodes) {
	t.Run("CrossNodeOrder", func(t *testing.T) { testCrossNodeOrder(t, newNodes) })
	t.Run("Isolation", func(t *testing.T) { testIsolation(t, newNodes) })
	t.Run("SlowMember", func(t *testing.T) { testSlowMember(t, newNodes) })
	t.Run("Shutdown", func(t *testing.T) { testShutdown(t, newNodes) })
	t.Run("NodeKilled", func(t *testing.T) { testNodeKilled(t, newNodes) })
	t.Run("PublishExcept", func(t *testing.T) { testPublishExcept(t, newNodes) })
	t.Run("TopicOrder", func(t *testing.T) { testTopicOrder(t, newNodes) })
	t.Run("FirstMessageAfterJoin", func(t *testing.T) { testFirstMessageAfterJoin(t, newNodes) })
}

// Fleet is three (or more) nodes, each with a hub served by an httptest
// server.
type Fleet struct {
	t     *testing.T
	Nodes []*Server
}

// Server is one node: a hub behind an httptest server with the middleware.
type Server struct {
	Hub  *broadcast.Hub
	WS   *chiws.Middleware
	HTTP *httptest.Server
	node Node
	once sync.Once

	// Joined receives every member the handler joined, when there is
	// room in it.
	Joined chan *broadcast.Member

	stateMu sync.Mutex
	states  []bool
	stateCh chan struct{} // size one: a state change was recorded
	causes  []error       // why each socket served here ended
}

// WaitCause waits until a socket served here ended with cause (errors.Is).
func (s *Server) WaitCause(t *testing.T, cause error, n int) {
	t.Helper()
	waitFor(t, fmt.Sprintf("%d sockets ended by %v", n, cause), func() bool {
		s.stateMu.Lock()
		defer s.stateMu.Unlock()
		got := 0
		for _, err := range s.causes {
			if errors.Is(err, cause) {
				got++
			}
		}
		return got >= n
	})
}

// Start builds a fleet on nodes with opts for every hub.
func Start(t *testing.T, nodes []Node, opts broadcast.Options) *Fleet {
	t.Helper()
	f := &Fleet{t: t}
	for _, n := range nodes {
		s := &Server{node: n, stateCh: make(chan struct{}, 1), Joined: make(chan *broadcast.Member, 16)}
		o := opts
		o.OnBrokerState = s.recordState
		s.Hub = broadcast.NewHub(n.Broker, o)
		s.WS = chiws.New(chiws.Options{})
		s.HTTP = httptest.NewServer(s.WS.Handler(http.HandlerFunc(s.serve)))
		f.Nodes = append(f.Nodes, s)
		t.Cleanup(func() { s.Kill(t) })
	}
	return f
}

func (s *Server) recordState(_ *broadcast.Hub, up bool) {
	s.stateMu.Lock()
	s.states = append(s.states, up)
	s.stateMu.Unlock()
	select {
	case s.stateCh <- struct{}{}:
	default:
	}
}

// WaitState waits until the hub's last reported broker state is up.
func (s *Server) WaitState(t *testing.T, up bool) {
	t.Helper()
	deadline := time.NewTimer(Timeout)
	defer deadline.Stop()
	for {
		s.stateMu.Lock()
		n := len(s.states)
		last := n > 0 && s.states[n-1]
		s.stateMu.Unlock()
		if n > 0 && last == up {
			return
		}
		select {
		case <-s.stateCh:
		case <-deadline.C:
			t.Fatalf("broker state never became up=%v", up)
		}
	}
}

// serve joins the topics of ?topics=a,b and publishes what the client sends
// to the first of them, as the example room does.
func (s *Server) serve(w http.ResponseWriter, r *http.Request) {
	c, err := chiws.Accept(w, r, nil)
	if err != nil {
		return
	}
	q := r.URL.Query()
	topics := strings.Split(q.Get("topics"), ",")
	m, err := s.Hub.JoinWith(c, broadcast.JoinOptions{ID: q.Get("id")}, topics...)
	if err != nil {
		_ = c.Close(websocket.StatusTryAgainLater, "join failed")
		return
	}
	select {
	case s.Joined <- m:
	default:
	}
	ctx := c.Context()
	for {
		typ, p, err := c.Read(ctx)
		if err != nil {
			if ctx.Err() != nil { // the socket ended, and Context says why
				s.stateMu.Lock()
				s.causes = append(s.causes, context.Cause(ctx))
				s.stateMu.Unlock()
			}
			return
		}
		// "except:" messages go to every member but this one.
		if rest, ok := bytes.CutPrefix(p, []byte("except:")); ok {
			err = s.Hub.PublishExcept(ctx, topics[0], m, typ, rest)
		} else {
			err = s.Hub.Publish(ctx, topics[0], typ, p)
		}
		if err != nil {
			_ = c.Close(websocket.StatusTryAgainLater, "broker unavailable")
			return
		}
	}
}

// Kill stops the node abruptly: its sockets are cut without a close
// handshake, then the hub, the middleware and the node's side of the bus
// stop. It may be called more than once.
func (s *Server) Kill(t *testing.T) {
	s.once.Do(func() {
		s.HTTP.CloseClientConnections()
		s.HTTP.Close()
		ctx, cancel := context.WithTimeout(context.Background(), Timeout)
		defer cancel()
		if err := s.Hub.Shutdown(ctx); err != nil {
			t.Errorf("hub shutdown: %v", err)
		}
		if err := s.WS.Shutdown(ctx); err != nil {
			t.Errorf("middleware shutdown: %v", err)
		}
		if s.node.Stop != nil {
			s.node.Stop()
		}
	})
}

// Msg is a message a client received.
type Msg struct {
	Typ  websocket.MessageType
	Data string
}

// Client is a coder/websocket client whose reader goroutine, started by
// Read, queues what it receives.
type Client struct {
	Conn  *websocket.Conn
	msgs  chan Msg
	done  chan struct{} // closed when the reader ends
	err   error         // the reader's last error, read after done
	start sync.Once
}

// Dial connects a client to s, member of topics, without reading yet.
// rcvBuf, when positive, shrinks the client's socket receive buffer.
func (s *Server) Dial(t *testing.T, rcvBuf int, topics ...string) *Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), Timeout)
	defer cancel()
	opts := &websocket.DialOptions{}
	if rcvBuf > 0 {
		d := &net.Dialer{}
		tr := &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := d.DialContext(ctx, network, addr)
			if tc, ok := c.(*net.TCPConn); ok {
				_ = tc.SetReadBuffer(rcvBuf)
			}
			return c, err
		}}
		t.Cleanup(tr.CloseIdleConnections)
		opts.HTTPClient = &http.Client{Transport: tr}
	}
	u := "ws" + strings.TrimPrefix(s.HTTP.URL, "http") + "/?topics=" + strings.Join(topics, ",")
	c, _, err := websocket.Dial(ctx, u, opts)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	c.SetReadLimit(1 << 20)
	cl := &Client{Conn: c, msgs: make(chan Msg, 1<<16), done: make(chan struct{})}
	t.Cleanup(func() {
		_ = c.CloseNow()
		cl.Read()
		<-cl.done
	})
	return cl
}

// Read starts the client's reader goroutine, once. It is owned by the
// client: it ends when the connection closes, and the test's cleanup
// closes it and waits.
func (c *Client) Read() {
	c.start.Do(func() {
		go func() { // owned by the client: ends when the connection closes; the cleanup waits (done)
			defer close(c.done)
			for {
				typ, p, err := c.Conn.Read(context.Background())
				if err != nil {
					c.err = err
					return
				}
				select {
				case c.msgs <- Msg{typ, string(p)}:
				default:
					c.err = errors.New("client queue overflow")
					_ = c.Conn.CloseNow()
					return
				}
			}
		}()
	})
}

// Probe is the prefix of the messages Settle publishes; Next skips them.
const Probe = "probe:"

// Next returns the next message that is not a probe.
func (c *Client) Next(t *testing.T) Msg {
	t.Helper()
	c.Read()
	deadline := time.NewTimer(Timeout)
	defer deadline.Stop()
	for {
		select {
		case m := <-c.msgs:
			if strings.HasPrefix(m.Data, Probe) {
				continue
			}
			return m
		case <-c.done:
			// Drain what arrived before the close.
			select {
			case m := <-c.msgs:
				if !strings.HasPrefix(m.Data, Probe) {
					return m
				}
				continue
			default:
			}
			t.Fatalf("connection closed: %v", c.err)
		case <-deadline.C:
			t.Fatalf("no message within %v", Timeout)
		}
	}
}

// Closed waits for the client's connection to end and returns the close
// status it received (-1 when there was no close frame).
func (c *Client) Closed(t *testing.T) (websocket.StatusCode, string) {
	t.Helper()
	c.Read()
	select {
	case <-c.done:
	case <-time.After(Timeout):
		t.Fatalf("connection still open after %v", Timeout)
	}
	var ce websocket.CloseError
	if errors.As(c.err, &ce) {
		return ce.Code, ce.Reason
	}
	return -1, ""
}

// WaitMembers waits until s's hub has n members in topic.
func (s *Server) WaitMembers(t *testing.T, topic string, n int) {
	t.Helper()
	waitFor(t, fmt.Sprintf("%d members in %q", n, topic), func() bool { return s.Hub.Len(topic) == n })
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	wstest.WaitFor(t, Timeout, what, cond)
}

// Settle publishes probes to topic from pub until every client has
// received one: interest travels between the servers of a cluster
// asynchronously, after Subscribe has returned. Clients must be reading.
func Settle(t *testing.T, pub *broadcast.Hub, topic string, clients ...*Client) {
	t.Helper()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	deadline := time.NewTimer(Timeout)
	defer deadline.Stop()
	seen := make([]bool, len(clients))
	left := len(clients)
	for i := 0; left > 0; i++ {
		err := pub.Publish(context.Background(), topic, websocket.MessageText, []byte(fmt.Sprintf("%s%d", Probe, i)))
		if err != nil && !errors.Is(err, broadcast.ErrBrokerUnavailable) {
			t.Fatalf("publish probe: %v", err)
		}
		select {
		case <-tick.C:
		case <-deadline.C:
			t.Fatalf("%d of %d clients never received a probe", left, len(clients))
		}
		for j, c := range clients {
			for !seen[j] {
				select {
				case m := <-c.msgs:
					if strings.HasPrefix(m.Data, Probe) {
						seen[j] = true
						left--
					} else {
						t.Fatalf("unexpected message while settling: %q", m.Data)
					}
					continue
				default:
				}
				break
			}
		}
	}
}
