package http2test

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"sync"
	"testing"

	"github.com/chiws/chiws/http2test/h2dial"
	"github.com/chiws/chiws/internal/endmatrix"
	"github.com/coder/websocket"
	"golang.org/x/net/http2"
)

// TestEndMatrix runs the end matrix (internal/endmatrix, the
// specification of how a socket ends) over HTTP/2, cleartext with prior
// knowledge (h2c); the root package runs it over HTTP/1.1.
func TestEndMatrix(t *testing.T) {
	endmatrix.Run(t, "HTTP/2", dialH2C)
}

// dialH2C dials a WebSocket over HTTP/2 (h2c) on a connection of its own,
// keeping the TCP connection (for FIN), the server's response (whose
// Close resets the stream) and the stream (for raw frames).
func dialH2C(ctx context.Context, t *testing.T, url string) (*endmatrix.Client, error) {
	var (
		mu  sync.Mutex
		tcp net.Conn
	)
	tr := &http2.Transport{
		AllowHTTP: true,
		DialTLSContext: func(ctx context.Context, network, addr string, _ *tls.Config) (net.Conn, error) {
			var d net.Dialer
			c, err := d.DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			mu.Lock()
			defer mu.Unlock()
			if tcp != nil {
				c.Close()
				return nil, errors.New("a second connection for one WebSocket")
			}
			tcp = c
			return c, nil
		},
	}
	st := &streamTap{}
	st.rt = &h2dial.RoundTripper{H2: tr, OnResponse: func(r *http.Response) { st.server = r }}
	ws, _, err := websocket.Dial(ctx, url, &websocket.DialOptions{HTTPClient: &http.Client{Transport: st}})
	if err != nil {
		tr.CloseIdleConnections()
		if tcp != nil {
			tcp.Close()
		}
		return nil, err
	}
	t.Cleanup(func() {
		ws.CloseNow()
		tcp.Close()
		tr.CloseIdleConnections()
	})
	return &endmatrix.Client{
		WS:    ws,
		Raw:   st.stream,
		Fin:   tcp.Close,
		Reset: st.server.Body.Close, // x/net sends RST_STREAM (CANCEL) for an unfinished stream
		Tap:   st.tap,
	}, nil
}

// streamTap is the client's transport: h2dial's, with the stream that
// websocket.Dial receives as the response body tapped (endmatrix.TapStream).
type streamTap struct {
	rt     *h2dial.RoundTripper
	server *http.Response     // the server's own response (h2dial's OnResponse)
	stream io.ReadWriteCloser // the tapped stream
	tap    *endmatrix.Tap
}

func (s *streamTap) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := s.rt.RoundTrip(req)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		return resp, err
	}
	rwc, ok := resp.Body.(io.ReadWriteCloser)
	if !ok {
		resp.Body.Close()
		return nil, errors.New("h2dial's 101 has no stream")
	}
	s.stream, s.tap = endmatrix.TapStream(rwc)
	resp.Body = s.stream
	return resp, nil
}
