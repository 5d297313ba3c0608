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
// # Delivery
//
// Delivery is at most once. Messages from one publisher (one goroutine
// calling Publish, or one socket whose handler publishes what it reads)
// arrive in the order they were published at every member of every hub;
// messages of different publishers may interleave differently at different
// members. Nothing is stored: a member that joins later, a hub that was
// disconnected from its broker, or a member dropped for being slow does not
// receive what it missed. Text stays text and binary stays binary.
//
// A member whose queue exceeds Options.QueueMessages or Options.QueueBytes
// is closed with 1008 Policy Violation "too slow"; the broker's delivery
// goroutine and the other members never wait for it.
//
// # Broker outages
//
// While the broker's server is unreachable, Publish fails at once with an
// error wrapping ErrBrokerUnavailable, and nothing is buffered. The broker
// restores the hub's subscriptions when the server is back. Messages
// published meanwhile are lost, so Options.OnBrokerState lets the
// application close its sockets with 1013 Try Again Later: clients then
// reconnect and fetch the state they missed.
package broadcast
