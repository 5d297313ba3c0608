package snippets

import (
	"bytes"
	"context"
	"net/http"
	"strings"

	"github.com/chiws/chiws"
	"github.com/chiws/chiws/broadcast"
	"github.com/coder/websocket"
	"github.com/go-chi/chi/v5"
)

// RoomRouter is the hub example of docs/broadcast.md: a room per URL, on
// broker, whose sockets are closed with 1013 while the broker is away. The
// router must be served behind ws.Handler; on SIGTERM, call hub.Shutdown
// after the middleware's Shutdown.
func RoomRouter(broker broadcast.Broker) (*broadcast.Hub, chi.Router) {
	hub := broadcast.NewHub(broker, broadcast.Options{
		OnBrokerState: func(h *broadcast.Hub, up bool) {
			if !up { // the members whose messages are being lost resync
				h.CloseCutOff(websocket.StatusTryAgainLater, "broker unavailable")
			}
		},
	})

	r := chi.NewRouter()
	r.Get("/room/{name}", func(w http.ResponseWriter, r *http.Request) {
		topic := "room." + chi.URLParam(r, "name")
		c, err := chiws.Accept(w, r, nil)
		if err != nil {
			return
		}
		if _, err := hub.Join(c, topic); err != nil {
			c.Close(websocket.StatusTryAgainLater, "try again later")
			return
		}
		for { // the hub writes; the handler reads until the socket closes
			typ, p, err := c.Read(c.Context())
			if err != nil {
				return // the member has left
			}
			if err := hub.Publish(c.Context(), topic, typ, p); err != nil {
				c.Close(websocket.StatusTryAgainLater, "broker unavailable")
				return
			}
		}
	})
	// On SIGTERM: ws.Shutdown(ctx) (1001 to every socket), hub.Shutdown(ctx), then the broker.
	return hub, r
}

// ChatRouter is the chat example of docs/broadcast.md: a member is its
// user (from the request, as an auth middleware would put it in the
// context), gets the room's recent history before any live message,
// sends to everyone else, and its cursor is a KeepLatest topic. history
// stands for the application's store.
func ChatRouter(broker broadcast.Broker, history func(room string) [][]byte) (*broadcast.Hub, chi.Router) {
	hub := broadcast.NewHub(broker, broadcast.Options{
		// A slow client gets the latest cursor positions, not a 1008.
		Backpressure: func(topic string) broadcast.Backpressure {
			if strings.HasSuffix(topic, ".cursors") {
				return broadcast.KeepLatest
			}
			return broadcast.CloseSlow
		},
	})
	r := chi.NewRouter()
	r.Get("/chat/{room}", func(w http.ResponseWriter, r *http.Request) {
		room := "chat." + chi.URLParam(r, "room")
		c, err := chiws.Accept(w, r, nil)
		if err != nil {
			return
		}
		m, err := hub.JoinWith(c, broadcast.JoinOptions{
			ID:     r.Header.Get("X-User"), // your auth middleware's user
			Paused: true,                   // live messages wait for the history
		}, room, room+".cursors")
		if err != nil {
			c.Close(websocket.StatusTryAgainLater, "try again later")
			return
		}
		for _, msg := range history(room) {
			_ = m.Send(websocket.MessageText, msg) // fails only once the member has left
		}
		m.Resume() // what was published since the join follows
		for {
			typ, p, err := c.Read(c.Context())
			if err != nil {
				return // the member has left
			}
			topic := room
			if bytes.HasPrefix(p, []byte("cursor:")) {
				topic = room + ".cursors"
			}
			// The sender shows its own message; everyone else gets it.
			if err := hub.PublishExcept(c.Context(), topic, m, typ, p); err != nil {
				c.Close(websocket.StatusTryAgainLater, "broker unavailable")
				return
			}
		}
	})
	return hub, r
}

// JoinAndPublish is the broadcast example of the README: c joins a room of
// a hub in this process, and a message goes to every member of it.
func JoinAndPublish(ctx context.Context, c *chiws.Conn) error {
	hub := broadcast.NewHub(broadcast.NewMemory(), broadcast.Options{})
	_, err := hub.Join(c, "room.42") // the hub writes to c; the handler keeps reading it
	if err != nil {
		return err
	}
	err = hub.Publish(ctx, "room.42", websocket.MessageText, []byte("hi"))
	return err
}
