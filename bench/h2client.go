package bench

import (
	"context"
	"crypto/tls"
	"net"
	"net/http"
	"time"

	"github.com/chiws/chiws/http2test/h2dial"
	"golang.org/x/net/http2"
)

// Protocols of the client, as accepted by benchclient -proto.
const (
	// ProtoH1 dials every WebSocket as an HTTP/1.1 upgrade, one TCP
	// connection per socket.
	ProtoH1 = "h1"
	// ProtoH2C dials every WebSocket as an RFC 8441 extended CONNECT over
	// cleartext HTTP/2 with prior knowledge (h2c): the sockets share one
	// TCP connection per source address.
	ProtoH2C = "h2c"
)

// HTTP/2 settings of the benchmark server for ProtoH2C (ConfigureH2C): the
// stream limit is raised from net/http's default (250 per connection) so
// that a source's sockets never wait for a stream, and the receive
// buffers are the ones docs/http2.md recommends.
const (
	H2MaxConcurrentStreams          = 1000
	H2MaxReceiveBufferPerStream     = 64 << 10
	H2MaxReceiveBufferPerConnection = 4<<20 - 1
)

// ConfigureH2C makes srv serve HTTP/1.1 and cleartext HTTP/2 with prior
// knowledge on the same listener, with the H2* settings. WebSockets over
// HTTP/2 also need the process to start with GODEBUG=http2xconnect=1.
func ConfigureH2C(srv *http.Server) {
	var p http.Protocols
	p.SetHTTP1(true)
	p.SetUnencryptedHTTP2(true)
	srv.Protocols = &p
	srv.HTTP2 = &http.HTTP2Config{
		MaxConcurrentStreams:          H2MaxConcurrentStreams,
		MaxReceiveBufferPerStream:     H2MaxReceiveBufferPerStream,
		MaxReceiveBufferPerConnection: H2MaxReceiveBufferPerConnection,
	}
}

// NewH2CClient is NewClient speaking ProtoH2C: one
// golang.org/x/net/http2.Transport per source address, so the sockets of
// a source share one TCP connection (more only if the server's stream
// limit were reached).
func NewH2CClient(addr, ctlAddr string, sources int) *Client {
	c := &Client{Addr: addr, CtlAddr: ctlAddr, ctl: &http.Client{Timeout: 30 * time.Second}}
	for i := range max(sources, 1) {
		d := &net.Dialer{
			Timeout:   10 * time.Second,
			LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(2+i))},
		}
		tr := &http2.Transport{
			AllowHTTP: true,
			DialTLSContext: func(ctx context.Context, network, addr string, _ *tls.Config) (net.Conn, error) {
				c.tcpDials.Add(1)
				return d.DialContext(ctx, network, addr)
			},
		}
		c.clients = append(c.clients, &http.Client{Transport: &h2dial.RoundTripper{H2: tr}})
	}
	return c
}
