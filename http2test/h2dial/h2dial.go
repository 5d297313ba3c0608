// Package h2dial dials WebSockets over HTTP/2 (RFC 8441) with
// coder/websocket's client, for the tests and benchmarks of chiws.
package h2dial

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

	"golang.org/x/net/http2"
)

// Transport returns an HTTP/2-only transport: over TLS with tlsConfig, or,
// when tlsConfig is nil, cleartext HTTP/2 with prior knowledge (h2c).
func Transport(tlsConfig *tls.Config) *http2.Transport {
	if tlsConfig != nil {
		return &http2.Transport{TLSClientConfig: tlsConfig}
	}
	return &http2.Transport{
		AllowHTTP: true,
		DialTLSContext: func(ctx context.Context, network, addr string, _ *tls.Config) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, addr)
		},
	}
}

// RoundTripper lets coder/websocket's Dial speak RFC 8441: it turns the
// HTTP/1.1 upgrade request that websocket.Dial builds into an extended
// CONNECT over HTTP/2 (golang.org/x/net/http2's Transport sends one when
// the request has a :protocol header, once the server's SETTINGS allow
// it), and answers with the "101 Switching Protocols" whose Body is an
// io.ReadWriteCloser that websocket.DialOptions.HTTPClient requires.
// net/http's own client cannot send extended CONNECT.
//
//	ws, _, err := websocket.Dial(ctx, url, &websocket.DialOptions{
//		HTTPClient: &http.Client{Transport: &h2dial.RoundTripper{H2: h2dial.Transport(nil)}},
//	})
type RoundTripper struct {
	// H2 is the HTTP/2 transport that carries the streams.
	H2 *http2.Transport

	// OnResponse, when set, sees the server's own response to the
	// extended CONNECT (its 200 or its refusal), before it is turned
	// into what websocket.Dial expects.
	OnResponse func(*http.Response)
}

// CloseIdleConnections closes the transport's connections that have no
// stream (http.Client.CloseIdleConnections calls it).
func (t *RoundTripper) CloseIdleConnections() { t.H2.CloseIdleConnections() }

// RoundTrip sends WebSocket upgrades as extended CONNECTs, and other
// requests as they are.
func (t *RoundTripper) RoundTrip(req *http.Request) (*http.Response, error) {
	if !strings.EqualFold(req.Header.Get("Upgrade"), "websocket") {
		return t.H2.RoundTrip(req)
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
	resp, err := t.H2.RoundTrip(creq)
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
	if t.OnResponse != nil {
		t.OnResponse(resp)
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
