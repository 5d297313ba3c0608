package broadcast_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"time"

	"github.com/chiws/chiws"
	"github.com/chiws/chiws/broadcast"
	"github.com/coder/websocket"
	"github.com/go-chi/chi/v5"
)

// A chat room: every message a member sends goes to every member of the
// room, in this process and, with a NATS or Redis broker, in every other.
func Example() {
	b := broadcast.NewMemory() // natsbroker.Connect or redisbroker.New for a fleet
	defer b.Close()
	hub := broadcast.NewHub(b, broadcast.Options{})
	ws := chiws.New(chiws.Options{})
	joined := make(chan struct{}, 1) // for this example's client only

	r := chi.NewRouter()
	r.Use(ws.Handler)
	r.Get("/room/{name}", func(w http.ResponseWriter, r *http.Request) {
		topic := "room." + chi.URLParam(r, "name")
		c, err := chiws.Accept(w, r, nil)
		if err != nil {
			return
		}
		if _, err := hub.Join(c, topic); err != nil {
			_ = c.Close(websocket.StatusTryAgainLater, "try again later")
			return
		}
		joined <- struct{}{}
		// The hub writes; the handler reads until the socket closes.
		ctx := c.Context()
		for {
			typ, p, err := c.Read(ctx)
			if err != nil {
				return // the member has left
			}
			if err := hub.Publish(ctx, topic, typ, p); err != nil {
				_ = c.Close(websocket.StatusTryAgainLater, "broker unavailable")
				return
			}
		}
	})
	srv := httptest.NewServer(r)
	defer srv.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	url := "ws" + strings.TrimPrefix(srv.URL, "http") + "/room/go"
	alice, _, err := websocket.Dial(ctx, url, nil)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer alice.CloseNow()
	<-joined
	_ = alice.Write(ctx, websocket.MessageText, []byte("hello, room"))
	typ, p, _ := alice.Read(ctx)
	fmt.Println(typ, string(p))

	_ = alice.Close(websocket.StatusNormalClosure, "bye")

	// On SIGTERM: the middleware's drain (1001 to every socket), then
	// the hub, then the broker.
	_ = ws.Shutdown(ctx)
	_ = hub.Shutdown(ctx)
	// Output: MessageText hello, room
}

// To leave one process, give the hub another broker; nothing else
// changes. OnBrokerState tells the application when the broker's server
// goes away, so its clients can reconnect and resynchronise.
func ExampleOptions_onBrokerState() {
	hub := broadcast.NewHub(broadcast.NewMemory(), broadcast.Options{
		OnBrokerState: func(h *broadcast.Hub, up bool) {
			if !up { // the members whose messages are being lost resync
				h.CloseCutOff(websocket.StatusTryAgainLater, "broker unavailable")
			}
		},
	})
	fmt.Println(hub.Len("room"))
	// Output: 0
}
