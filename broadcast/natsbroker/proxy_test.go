package natsbroker_test

import (
	"testing"

	"github.com/chiws/chiws/internal/wstest"
)

// newProxy forwards a loopback port to target until the test ends. The
// health tests cut it with Pause, which keeps the connections open and
// loses nothing (a network cut that TCP survives), and heal it with Resume.
func newProxy(t *testing.T, target string) *wstest.Proxy {
	t.Helper()
	p, err := wstest.NewProxy(target)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })
	return p
}

// natsURL is p's address as a nats:// URL.
func natsURL(p *wstest.Proxy) string { return "nats://" + p.Addr() }
