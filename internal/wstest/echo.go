package wstest

import (
	"net/http"

	"github.com/chiws/chiws"
)

// Echo is the reference echo endpoint: it accepts the socket and sends
// every message back, with its type, until the socket ends.
func Echo(w http.ResponseWriter, r *http.Request) {
	c, err := chiws.Accept(w, r, nil)
	if err != nil {
		return
	}
	_ = EchoLoop(c)
}

// EchoLoop sends every message read from c back, with its type, and
// returns the read or write error that ended the socket.
func EchoLoop(c *chiws.Conn) error {
	ctx := c.Context()
	for {
		typ, p, err := c.Read(ctx)
		if err != nil {
			return err
		}
		if err := c.Write(ctx, typ, p); err != nil {
			return err
		}
	}
}
