package natsbroker_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/chiws/chiws/broadcast"
	"github.com/chiws/chiws/broadcast/internal/fleettest"
	"github.com/chiws/chiws/broadcast/natsbroker"
	"github.com/coder/websocket"
	"github.com/nats-io/nats.go"
)

// twoHubs starts two embedded servers joined by a route, a broker on
// each, and a hub behind an httptest server on each broker.
func twoHubs(t *testing.T) (*fleettest.Fleet, []*natsbroker.Embedded) {
	t.Helper()
	es := startCluster(t, 2, natsbroker.EmbeddedOptions{})
	a := connectTo(t, es[0], fast("alpha"))
	b := connectTo(t, es[1], fast("beta"))
	waitHealth(t, a, "alpha sees beta", seesUp(b))
	waitHealth(t, b, "beta sees alpha", seesUp(a))
	opts := broadcast.Options{QueueMessages: 1 << 14, QueueBytes: 64 << 20}
	return fleettest.Start(t, []fleettest.Node{{Broker: a}, {Broker: b}}, opts), es
}

// TestTopicOrder documents the order NATS keeps: one publisher's messages
// to one topic arrive in order; across two topics nothing is promised. A
// hub publishes alternately to two topics, and a member of both on the
// other instance receives each topic's messages in order, without a gap.
func TestTopicOrder(t *testing.T) {
	f, _ := twoHubs(t)
	c := f.Nodes[0].Dial(t, 0, "order.a", "order.b")
	c.Read()
	f.Nodes[0].WaitMembers(t, "order.b", 1) // Join returned: both topics synced
	pub := f.Nodes[1].Hub
	ctx := context.Background()
	const n = 500
	for i := range n {
		for _, topic := range []string{"order.a", "order.b"} {
			if err := pub.Publish(ctx, topic, websocket.MessageText, []byte(fmt.Sprintf("%s %d", topic, i))); err != nil {
				t.Fatal(err)
			}
		}
	}
	next := map[string]int{"order.a": 0, "order.b": 0}
	swaps, last := 0, ""
	for range 2 * n {
		m := c.Next(t)
		var topic string
		var i int
		if _, err := fmt.Sscanf(m.Data, "%s %d", &topic, &i); err != nil {
			t.Fatalf("unexpected message %q", m.Data)
		}
		want, ok := next[topic]
		if !ok || i != want {
			t.Fatalf("%s: got message %d, want %d (out of order or lost)", topic, i, want)
		}
		next[topic]++
		if topic == last {
			swaps++ // the alternation was not kept: allowed across topics
		}
		last = topic
	}
	t.Logf("%d times two consecutive messages were of one topic (published alternately)", swaps)
}

// TestRawPublish: a plain NATS client (not a broker) publishes on
// <SubjectPrefix><topic>, on the other instance's server, an envelope
// from broadcast.AppendEnvelope (text, then binary) and a hand-written version 1 envelope;
// each reaches a hub member over its WebSocket, with its type.
func TestRawPublish(t *testing.T) {
	f, es := twoHubs(t)
	c := f.Nodes[0].Dial(t, 0, "raw")
	c.Read()
	f.Nodes[0].WaitMembers(t, "raw", 1)
	nc, err := nats.Connect("", nats.InProcessServer(es[1].Server()))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	text, err := broadcast.AppendEnvelope(nil, broadcast.Envelope{Type: websocket.MessageText, Payload: []byte("enveloped")})
	if err != nil {
		t.Fatal(err)
	}
	bin, err := broadcast.AppendEnvelope(nil, broadcast.Envelope{Type: websocket.MessageBinary, Payload: []byte{0, 1, 2}})
	if err != nil {
		t.Fatal(err)
	}
	subject := natsbroker.DefaultSubjectPrefix + "raw"
	for _, p := range [][]byte{text, bin, []byte("\x01\x01hello")} {
		if err := nc.Publish(subject, p); err != nil {
			t.Fatal(err)
		}
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	for _, want := range []fleettest.Msg{{Typ: websocket.MessageText, Data: "enveloped"}, {Typ: websocket.MessageBinary, Data: "\x00\x01\x02"}, {Typ: websocket.MessageText, Data: "hello"}} {
		if m := c.Next(t); m != want {
			t.Fatalf("got %v %q, want %v %q", m.Typ, m.Data, want.Typ, want.Data)
		}
	}
	if st := f.Nodes[0].Hub.Stats(); st.Malformed != 0 {
		t.Fatalf("%d malformed messages", st.Malformed)
	}
}
