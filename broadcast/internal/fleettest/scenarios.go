package fleettest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/chiws/chiws"
	"github.com/chiws/chiws/broadcast"
	"github.com/coder/websocket"
)

// roomy are hub options under which no test member is ever too slow.
var roomy = broadcast.Options{QueueMessages: 1 << 14, QueueBytes: 64 << 20}

// testCrossNodeOrder: a publishing client on each node, members on every
// node; everyone receives every message, each publisher's in order, with
// its type.
func testCrossNodeOrder(t *testing.T, newNodes NewNodes) {
	f := Start(t, newNodes(t), roomy)
	const n = 200
	var clients []*Client
	for _, s := range f.Nodes {
		for range 2 {
			c := s.Dial(t, 0, "room")
			c.Read()
			clients = append(clients, c)
		}
	}
	for _, s := range f.Nodes {
		s.WaitMembers(t, "room", 2)
	}
	for _, s := range f.Nodes {
		Settle(t, s.Hub, "room", clients...)
	}

	// The first client of each node publishes through its socket.
	var wg sync.WaitGroup
	errs := make(chan error, len(f.Nodes))
	for i := range f.Nodes {
		pub := clients[2*i]
		wg.Add(1)
		go func() { // owned by the test: waited for below
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), Timeout)
			defer cancel()
			for j := range n {
				typ, p := websocket.MessageText, []byte(fmt.Sprintf("p%d-%d", i, j))
				if j%2 == 1 {
					typ, p = websocket.MessageBinary, append([]byte{0xff}, p...)
				}
				if err := pub.Conn.Write(ctx, typ, p); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("publisher: %v", err)
	}
	for ci, c := range clients {
		next := make([]int, len(f.Nodes))
		for range n * len(f.Nodes) {
			m := c.Next(t)
			data := m.Data
			wantTyp := websocket.MessageText
			if m.Typ == websocket.MessageBinary {
				if !bytes.HasPrefix([]byte(data), []byte{0xff}) {
					t.Fatalf("client %d: binary message %q lacks its marker", ci, data)
				}
				data = data[1:]
				wantTyp = websocket.MessageBinary
			}
			var p, j int
			if _, err := fmt.Sscanf(data, "p%d-%d", &p, &j); err != nil || p >= len(next) {
				t.Fatalf("client %d: unexpected message %q", ci, m.Data)
			}
			if j != next[p] {
				t.Fatalf("client %d: publisher %d: got message %d, want %d (out of order or lost)", ci, p, j, next[p])
			}
			if (j%2 == 1) != (wantTyp == websocket.MessageBinary) {
				t.Fatalf("client %d: message %q arrived as type %v", ci, data, m.Typ)
			}
			next[p]++
		}
	}
}

// testIsolation: members of room a never see room b's messages.
func testIsolation(t *testing.T, newNodes NewNodes) {
	f := Start(t, newNodes(t), roomy)
	var as, bs []*Client
	for _, s := range f.Nodes {
		a, b := s.Dial(t, 0, "room.a"), s.Dial(t, 0, "room.b")
		a.Read()
		b.Read()
		as, bs = append(as, a), append(bs, b)
	}
	for _, s := range f.Nodes {
		s.WaitMembers(t, "room.a", 1)
		s.WaitMembers(t, "room.b", 1)
	}
	pub := f.Nodes[0].Hub
	Settle(t, pub, "room.a", as...)
	Settle(t, pub, "room.b", bs...)
	ctx := context.Background()
	for i := range 20 {
		if err := pub.Publish(ctx, "room.a", websocket.MessageText, []byte(fmt.Sprintf("a%d", i))); err != nil {
			t.Fatal(err)
		}
	}
	if err := pub.Publish(ctx, "room.b", websocket.MessageText, []byte("b0")); err != nil {
		t.Fatal(err)
	}
	for i, c := range as {
		for j := range 20 {
			if m := c.Next(t); m.Data != fmt.Sprintf("a%d", j) {
				t.Fatalf("room a client %d got %q, want a%d", i, m.Data, j)
			}
		}
	}
	for i, c := range bs {
		if m := c.Next(t); m.Data != "b0" {
			t.Fatalf("room b client %d got %q, want b0", i, m.Data)
		}
	}
	// Unsubscribing the last member releases the hub's broker subscription.
	if got := f.Nodes[1].Hub.Stats().Topics; got != 2 {
		t.Fatalf("node 1 has %d topics, want 2", got)
	}
}

// testSlowMember: a member that stops reading is closed with 1008 "too
// slow" while every other member, on every node, receives everything.
func testSlowMember(t *testing.T, newNodes NewNodes) {
	opts := broadcast.Options{QueueMessages: 8, WriteTimeout: time.Minute}
	f := Start(t, newNodes(t), opts)
	var fast []*Client
	for _, s := range f.Nodes {
		c := s.Dial(t, 0, "room")
		c.Read()
		fast = append(fast, c)
	}
	slowNode := f.Nodes[2]
	// The slow client does not read until it was dropped; its receive
	// buffer is small, so the server's writes to it soon block.
	slow := slowNode.Dial(t, 64<<10, "room")
	f.Nodes[0].WaitMembers(t, "room", 1)
	f.Nodes[1].WaitMembers(t, "room", 1)
	slowNode.WaitMembers(t, "room", 2)
	pub := f.Nodes[0].Hub
	Settle(t, pub, "room", fast...)

	msg := bytes.Repeat([]byte("m"), 16<<10)
	ctx := context.Background()
	const max = 4000 // 64 MiB: far more than any loopback buffer
	sent := 0
	for ; sent < max && slowNode.Hub.Stats().Slow == 0; sent++ {
		// Paced: each message reaches every fast member before the next,
		// so only the slow member's queue grows.
		p := append([]byte(fmt.Sprintf("%06d", sent)), msg...)
		if err := pub.Publish(ctx, "room", websocket.MessageBinary, p); err != nil {
			t.Fatal(err)
		}
		for i, c := range fast {
			if m := c.Next(t); m.Data[:6] != fmt.Sprintf("%06d", sent) {
				t.Fatalf("fast client %d got %q, want %06d", i, m.Data[:6], sent)
			}
		}
	}
	if slowNode.Hub.Stats().Slow != 1 {
		t.Fatalf("slow member still in the room after %d messages", sent)
	}
	// The others go on receiving (paced, as their queues are small too).
	for i := range 10 {
		if err := pub.Publish(ctx, "room", websocket.MessageText, []byte(fmt.Sprintf("after%d", i))); err != nil {
			t.Fatal(err)
		}
		for ci, c := range fast {
			if m := c.Next(t); m.Data != fmt.Sprintf("after%d", i) {
				t.Fatalf("fast client %d got %q, want after%d", ci, m.Data, i)
			}
		}
	}
	// Once it reads again, the slow client gets what was under way, then
	// the close frame.
	code, reason := slow.Closed(t)
	if code != websocket.StatusPolicyViolation || reason != "too slow" {
		t.Fatalf("slow client closed with %v %q, want 1008 \"too slow\"", code, reason)
	}
	slowNode.WaitMembers(t, "room", 1)
	slowNode.WaitCause(t, broadcast.ErrTooSlow, 1)
}

// testShutdown: Shutdown sends 1001 to its members, and the hub refuses
// Join and Publish afterwards; the other nodes go on.
func testShutdown(t *testing.T, newNodes NewNodes) {
	f := Start(t, newNodes(t), roomy)
	a, b := f.Nodes[0].Dial(t, 0, "room"), f.Nodes[0].Dial(t, 0, "room")
	a.Read()
	b.Read()
	other := f.Nodes[1].Dial(t, 0, "room")
	other.Read()
	f.Nodes[0].WaitMembers(t, "room", 2)
	f.Nodes[1].WaitMembers(t, "room", 1)
	ctx, cancel := context.WithTimeout(context.Background(), Timeout)
	defer cancel()
	hub := f.Nodes[0].Hub
	if err := hub.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	for _, c := range []*Client{a, b} {
		if code, _ := c.Closed(t); code != websocket.StatusGoingAway {
			t.Fatalf("member closed with %v, want 1001", code)
		}
	}
	f.Nodes[0].WaitCause(t, chiws.ErrShuttingDown, 2)
	if err := hub.Publish(ctx, "room", websocket.MessageText, []byte("x")); !errors.Is(err, broadcast.ErrHubClosed) {
		t.Fatalf("Publish after Shutdown: %v, want ErrHubClosed", err)
	}
	late := f.Nodes[0].Dial(t, 0, "room")
	if code, _ := late.Closed(t); code != websocket.StatusTryAgainLater {
		t.Fatalf("Join after Shutdown: closed with %v, want 1013 from the handler", code)
	}
	if st := hub.Stats(); st.Members != 0 || st.Topics != 0 {
		t.Fatalf("after Shutdown: %+v, want no member and no topic", st)
	}
	Settle(t, f.Nodes[2].Hub, "room", other)
}

// testNodeKilled: a node dies mid-broadcast; the members of the others
// receive every message, in order.
func testNodeKilled(t *testing.T, newNodes NewNodes) {
	f := Start(t, newNodes(t), roomy)
	var live []*Client
	for _, s := range f.Nodes[:2] {
		for range 2 {
			c := s.Dial(t, 0, "room")
			c.Read()
			live = append(live, c)
		}
	}
	doomed := f.Nodes[2].Dial(t, 0, "room")
	doomed.Read()
	f.Nodes[0].WaitMembers(t, "room", 2)
	f.Nodes[1].WaitMembers(t, "room", 2)
	f.Nodes[2].WaitMembers(t, "room", 1)
	pub := f.Nodes[0].Hub
	Settle(t, pub, "room", append(live, doomed)...)

	const n = 1000
	published := make(chan error, 1)
	go func() { // owned by the test: received from below
		for i := range n {
			if err := pub.Publish(context.Background(), "room", websocket.MessageText, []byte(fmt.Sprintf("m%d", i))); err != nil {
				published <- err
				return
			}
		}
		published <- nil
	}()
	for i := range n / 4 {
		if m := doomed.Next(t); m.Data != fmt.Sprintf("m%d", i) {
			t.Fatalf("doomed client got %q, want m%d", m.Data, i)
		}
	}
	f.Nodes[2].Kill(t)
	if err := <-published; err != nil {
		t.Fatalf("publish: %v", err)
	}
	for ci, c := range live {
		for i := range n {
			if m := c.Next(t); m.Data != fmt.Sprintf("m%d", i) {
				t.Fatalf("client %d got %q, want m%d", ci, m.Data, i)
			}
		}
	}
}

// Outage stops the message bus and returns a function that starts it
// again.
type Outage func(t *testing.T) (restart func())

// RunOutage: the broker's server restarts. Publish fails at once during
// the outage, the hubs learn it through OnBrokerState, and the
// subscriptions come back by themselves: delivery resumes, in order.
func RunOutage(t *testing.T, nodes []Node, outage Outage) {
	f := Start(t, nodes, roomy)
	var clients []*Client
	for _, s := range f.Nodes {
		c := s.Dial(t, 0, "room")
		c.Read()
		clients = append(clients, c)
	}
	for _, s := range f.Nodes {
		s.WaitMembers(t, "room", 1)
	}
	pub := f.Nodes[0].Hub
	Settle(t, pub, "room", clients...)

	restart := outage(t)
	for _, s := range f.Nodes {
		s.WaitState(t, false)
	}
	start := time.Now()
	err := pub.Publish(context.Background(), "room", websocket.MessageText, []byte("lost"))
	if !errors.Is(err, broadcast.ErrBrokerUnavailable) {
		t.Fatalf("Publish during the outage: %v, want ErrBrokerUnavailable", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("Publish during the outage took %v, want an immediate error", d)
	}

	restart()
	for _, s := range f.Nodes {
		s.WaitState(t, true)
	}
	Settle(t, pub, "room", clients...)
	const n = 300
	for i := range n {
		if err := pub.Publish(context.Background(), "room", websocket.MessageText, []byte(fmt.Sprintf("m%d", i))); err != nil {
			t.Fatalf("publish after the outage: %v", err)
		}
	}
	for ci, c := range clients {
		for i := range n {
			if m := c.Next(t); m.Data != fmt.Sprintf("m%d", i) {
				t.Fatalf("client %d got %q, want m%d", ci, m.Data, i)
			}
		}
	}
}

// testPublishExcept: a member's "except" message reaches every other
// member, on every node, but not the member itself; the sender's key
// crosses the broker.
func testPublishExcept(t *testing.T, newNodes NewNodes) {
	f := Start(t, newNodes(t), roomy)
	var clients []*Client
	for _, s := range f.Nodes {
		c := s.Dial(t, 0, "room")
		c.Read()
		clients = append(clients, c)
		s.WaitMembers(t, "room", 1)
	}
	for _, s := range f.Nodes {
		Settle(t, s.Hub, "room", clients...)
	}
	ctx, cancel := context.WithTimeout(context.Background(), Timeout)
	defer cancel()
	sender := clients[0]
	// One publisher, one topic: "after" follows "typing" everywhere, so
	// the sender's next message proves it never got "typing".
	for _, msg := range []string{"except:typing", "after"} {
		if err := sender.Conn.Write(ctx, websocket.MessageText, []byte(msg)); err != nil {
			t.Fatal(err)
		}
	}
	if got := sender.Next(t).Data; got != "after" {
		t.Fatalf("the sender got %q, want only \"after\"", got)
	}
	for i, c := range clients[1:] {
		for _, want := range []string{"typing", "after"} {
			if got := c.Next(t).Data; got != want {
				t.Fatalf("member on node %d got %q, want %q", i+1, got, want)
			}
		}
	}
}

// testTopicOrder: the order guarantee is per topic and per publisher. One
// publisher alternates between two topics; a member of both on another
// node gets each topic's messages in order. Nothing is asserted across
// the topics: brokers may deliver them on different goroutines.
func testTopicOrder(t *testing.T, newNodes NewNodes) {
	f := Start(t, newNodes(t), roomy)
	sub := f.Nodes[len(f.Nodes)-1]
	c := sub.Dial(t, 0, "a", "b")
	c.Read()
	sub.WaitMembers(t, "a", 1)
	sub.WaitMembers(t, "b", 1)
	pub := f.Nodes[0]
	Settle(t, pub.Hub, "a", c)
	Settle(t, pub.Hub, "b", c)
	const n = 500
	ctx, cancel := context.WithTimeout(context.Background(), Timeout)
	defer cancel()
	for i := range n {
		for _, topic := range []string{"a", "b"} {
			msg := fmt.Sprintf("%s%d", topic, i)
			if err := pub.Hub.Publish(ctx, topic, websocket.MessageText, []byte(msg)); err != nil {
				t.Fatal(err)
			}
		}
	}
	next := map[byte]int{'a': 0, 'b': 0}
	for range 2 * n {
		m := c.Next(t).Data
		var i int
		if _, err := fmt.Sscanf(m[1:], "%d", &i); err != nil || next[m[0]] != i {
			t.Fatalf("got %q, want %c%d: out of order within its topic", m, m[0], next[m[0]])
		}
		next[m[0]]++
	}
}

// testFirstMessageAfterJoin: a join is effective on every node when Join
// returns. A member joins a new topic on one node, and the message
// published on another node the moment Join has returned reaches it,
// without Settle's probes, twenty times over.
func testFirstMessageAfterJoin(t *testing.T, newNodes NewNodes) {
	f := Start(t, newNodes(t), roomy)
	sub, pub := f.Nodes[len(f.Nodes)-1], f.Nodes[0]
	ctx, cancel := context.WithTimeout(context.Background(), Timeout)
	defer cancel()
	for i := range 20 {
		topic := fmt.Sprintf("first.%d", i)
		c := sub.Dial(t, 0, topic)
		c.Read()
		<-sub.Joined // Join has returned
		want := fmt.Sprintf("first message of %s", topic)
		if err := pub.Hub.Publish(ctx, topic, websocket.MessageText, []byte(want)); err != nil {
			t.Fatal(err)
		}
		if got := c.Next(t).Data; got != want {
			t.Fatalf("got %q, want %q", got, want)
		}
		_ = c.Conn.Close(websocket.StatusNormalClosure, "")
	}
}
