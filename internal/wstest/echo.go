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
	ctx := c.Context()
	for {
		typ, p, err := c.Read(ctx)
		if err != nil {
			return
		}
		if err := c.Write(ctx, typ, p); err != nil {
			return
		}
	}
}
