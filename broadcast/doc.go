// Package broadcast sends one message to many WebSockets: the rooms of a
// chat, the feeds of a dashboard, the tables of a game. A Hub keeps the
// sockets of one process, grouped by topic, and a Broker carries messages
// between the hubs of every process that serves the application.
//
// # One process or a fleet
//
// NewMemory is the broker of a single process. To run several instances
// behind a load balancer, give every instance's hub a broker on a shared
// message bus instead; nothing else changes:
//
//	b := broadcast.NewMemory()                          // one process
//	b, err := natsbroker.Connect("nats://nats:4222", natsbroker.Options{}) // a fleet
//	b, err := redisbroker.New(redisClient, redisbroker.Options{})        // a fleet
//	hub := broadcast.NewHub(b, broadcast.Options{})
//
// The NATS and Redis brokers live in modules of their own
// (github.com/chiws/chiws/broadcast/natsbroker and .../redisbroker), so an
// application that stays in one process never downloads their clients.
// Clustering, reconnects and persistence belong to those servers; the hub
// adds none of its own.
//
// # Members
//
// Join adds an accepted socket to topics. The hub only writes: each member
// has a bounded queue and one writer goroutine that the hub owns. Reading
// stays with the handler, because only the application knows what a
// client's message means (publish it, a command, a typing notice). The
// handler keeps reading until the socket closes, which also lets chiws's
// keep-alive see pongs; a handler that never reads calls CloseRead and
// Wait. A member leaves every topic when its socket closes.
//
//	c, err := chiws.Accept(w, r, nil)
//	if err != nil {
//		return
//	}
//	if _, err := hub.Join(c, "room"); err != nil {
//		c.Close(websocket.StatusTryAgainLater, "try again later")
//		return
//	}
//	for {
//		typ, p, err := c.Read(c.Context())
//		if err != nil {
//			return // closed: the member has left
//		}
//		if err := hub.Publish(c.Context(), "room", typ, p); err != nil {
//			c.Close(websocket.StatusTryAgainLater, "broker unavailable")
//			return
//		}
//	}
//
// Member.Send writes to one member, in order with its topics' messages;
// Hub.PublishExcept leaves one member out, on every instance; a join with
// JoinOptions.Paused lets the application send a snapshot before the live
// messages (Member.Resume). JoinOptions also gives the member an identity.
//
// # Delivery
//
// Delivery is at most once. Messages from one publisher to one topic (one
// goroutine calling Publish, or one socket whose handler publishes what it
// reads) arrive in the order they were published at every member of every
// hub; nothing is promised across topics, and messages of different
// publishers may interleave differently at different members. Nothing is
// stored: a member that joins later, a hub that was disconnected from its
// broker, or a member dropped for being slow does not receive what it
// missed. Text stays text and binary stays binary.
//
// Each member's queue is bounded by Options.QueueMessages and QueueBytes.
// What a topic's message does to a full queue is the topic's Backpressure:
// close the member with 1008 Policy Violation "too slow" (the default),
// drop the topic's oldest queued messages, or keep only its latest. The
// broker's delivery goroutine and the other members never wait for a slow
// member.
//
// # Broker outages
//
// A broker that is a Monitor tells whether messages still reach the fleet:
// its Health, per connection, partition or peer instance, is in
// Stats().Broker from the start, and Options.OnBrokerState reports when it
// goes down and up. While the broker's server is unreachable, Publish fails
// at once with an error wrapping ErrBrokerUnavailable, and nothing is
// buffered. Messages published meanwhile are lost, so OnBrokerState lets
// the application close its sockets with 1013 Try Again Later: clients
// then reconnect and fetch the state they missed.
//
// # Publishing from elsewhere
//
// A message on the broker is an Envelope, whose bytes are documented, so a
// service in another language may publish into a room; see AppendEnvelope
// and docs/broadcast.md for the subjects and channels.
package broadcast
