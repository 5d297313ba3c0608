package snippets

import (
	"net/http"
	"time"

	"github.com/chiws/chiws"
	"github.com/coder/websocket"
)

// NewBehindProxy is the keep-alive example of docs/keepalive.md.
func NewBehindProxy() *chiws.Middleware {
	return chiws.New(chiws.Options{
		// nginx drops a proxied connection after 60 s without traffic
		// (proxy_read_timeout). A quiet socket is pinged one to two
		// intervals after its last traffic: at most 50 s of silence.
		KeepAliveInterval: 25 * time.Second,
		// A peer that has not answered 10 s after a ping is gone: it is
		// detected at most 60 s after its last sign of life.
		KeepAliveTimeout: 10 * time.Second,
	})
}

// Mobile is the per-socket override example of docs/keepalive.md.
func Mobile(w http.ResponseWriter, r *http.Request) {
	c, err := chiws.Accept(w, r, &chiws.AcceptOptions{
		// Phones on cellular networks: ping less often to save battery and
		// give a radio waking from sleep more time to answer.
		KeepAliveInterval: 5 * time.Minute,
		KeepAliveTimeout:  time.Minute,
	})
	if err != nil {
		return
	}
	echoLoop(c)
}

// Clock returns the write-only handler of docs/keepalive.md: it sends the
// time every period and never reads a message.
func Clock(period time.Duration) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		c, err := chiws.Accept(w, r, nil)
		if err != nil {
			return
		}
		// CloseRead reads in the background: it processes pongs and the
		// client's close frame, and closes the socket if a data message
		// arrives. ctx is cancelled when the socket closes.
		ctx := c.CloseRead(c.Context())

		tick := time.NewTicker(period)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return // closed by the client, the keep-alive or Shutdown
			case now := <-tick.C:
				msg := []byte(now.UTC().Format(time.RFC3339Nano))
				if err := c.Write(ctx, websocket.MessageText, msg); err != nil {
					return
				}
			}
		}
	}
}

// echoLoop sends every message back until the socket closes.
func echoLoop(c *chiws.Conn) {
	ctx := c.Context()
	for {
		typ, msg, err := c.Read(ctx)
		if err != nil {
			return
		}
		if err := c.Write(ctx, typ, msg); err != nil {
			return
		}
	}
}
