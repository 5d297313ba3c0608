package bench

import (
	"context"
	"crypto/sha1"
	"crypto/tls"
	"encoding/base64"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

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
		c.clients = append(c.clients, &http.Client{Transport: &h2RoundTripper{h2: tr}})
	}
	return c
}

// h2RoundTripper lets coder/websocket's Dial speak RFC 8441: it turns the
// HTTP/1.1 upgrade request that websocket.Dial builds into an extended
// CONNECT over HTTP/2 (golang.org/x/net/http2's Transport sends one when
// the request has a :protocol header, once the server's SETTINGS allow
// it), and answers with the "101 Switching Protocols" whose Body is an
// io.ReadWriteCloser that websocket.DialOptions.HTTPClient requires.
// net/http's own client cannot send extended CONNECT.
type h2RoundTripper struct {
	h2 *http2.Transport
}

// CloseIdleConnections closes the transport's connections that have no
// stream (http.Client.CloseIdleConnections calls it).
func (t *h2RoundTripper) CloseIdleConnections() { t.h2.CloseIdleConnections() }

func (t *h2RoundTripper) RoundTrip(req *http.Request) (*http.Response, error) {
	if !strings.EqualFold(req.Header.Get("Upgrade"), "websocket") {
		return t.h2.RoundTrip(req)
	}
	key := req.Header.Get("Sec-WebSocket-Key")
	h := req.Header.Clone()
	for _, k := range []string{"Connection", "Upgrade", "Sec-Websocket-Key"} {
		h.Del(k)
	}
	h[":protocol"] = []string{"websocket"}

	// The stream outlives the handshake's context: websocket.Dial's ctx
	// bounds the handshake only.
	streamCtx, cancelStream := context.WithCancel(context.WithoutCancel(req.Context()))
	stop := context.AfterFunc(req.Context(), cancelStream)
	pr, pw := io.Pipe()
	creq := (&http.Request{
		Method:        http.MethodConnect,
		URL:           req.URL,
		Host:          req.Host,
		Header:        h,
		Body:          pr,
		ContentLength: -1,
	}).WithContext(streamCtx)
	resp, err := t.h2.RoundTrip(creq)
	if !stop() { // the handshake's context ended first
		if err == nil {
			resp.Body.Close()
			err = context.Cause(req.Context())
		}
		cancelStream()
		pw.Close()
		return nil, err
	}
	if err != nil {
		cancelStream()
		pw.CloseWithError(err)
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		pw.Close()
		resp.Body = &cancelBody{ReadCloser: resp.Body, cancel: cancelStream}
		return resp, nil // websocket.Dial reports the status
	}
	out := &http.Response{
		Status:     "101 Switching Protocols",
		StatusCode: http.StatusSwitchingProtocols,
		Proto:      "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header:        resp.Header.Clone(),
		ContentLength: -1,
		Request:       req,
		Body:          &clientStream{r: resp.Body, w: pw, cancel: cancelStream},
	}
	out.Header.Set("Connection", "Upgrade")
	out.Header.Set("Upgrade", "websocket")
	sum := sha1.Sum([]byte(key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))
	out.Header.Set("Sec-WebSocket-Accept", base64.StdEncoding.EncodeToString(sum[:]))
	return out, nil
}

type cancelBody struct {
	io.ReadCloser
	cancel context.CancelFunc
}

func (b *cancelBody) Close() error {
	err := b.ReadCloser.Close()
	b.cancel()
	return err
}

// clientStream is the client's end of one extended CONNECT stream: reads
// from the response body, writes into the request body.
type clientStream struct {
	r      io.ReadCloser
	w      *io.PipeWriter
	cancel context.CancelFunc
	once   sync.Once
}

func (s *clientStream) Read(p []byte) (int, error)  { return s.r.Read(p) }
func (s *clientStream) Write(p []byte) (int, error) { return s.w.Write(p) }

// Close ends the client's side and releases the stream.
func (s *clientStream) Close() error {
	s.once.Do(func() {
		s.w.Close()
		s.r.Close()
		s.cancel()
	})
	return nil
}
