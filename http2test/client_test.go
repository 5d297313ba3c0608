package http2test

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

// h2RoundTripper lets coder/websocket's Dial speak RFC 8441: it turns the
// HTTP/1.1 upgrade request that websocket.Dial builds into an extended
// CONNECT over HTTP/2 (golang.org/x/net/http2's Transport sends one when
// the request has a :protocol header, once the server's SETTINGS allow
// it), and answers with the "101 Switching Protocols" whose Body is an
// io.ReadWriteCloser that websocket.DialOptions.HTTPClient requires. This
// is test scaffolding: net/http's own client cannot send extended CONNECT.
type h2RoundTripper struct {
	h2 http.RoundTripper
}

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
	// RFC 8441: the server's 200 carries no HTTP/1.1 upgrade headers.
	for _, k := range []string{"Upgrade", "Connection", "Sec-Websocket-Accept"} {
		if _, ok := resp.Header[k]; ok {
			out.Header.Add("X-H2-Upgrade-Headers", k)
		}
	}
	out.Header.Set("Connection", "Upgrade")
	out.Header.Set("Upgrade", "websocket")
	sum := sha1.Sum([]byte(key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))
	out.Header.Set("Sec-WebSocket-Accept", base64.StdEncoding.EncodeToString(sum[:]))
	// Keep the server's real status for the tests' assertions.
	out.Header.Set("X-H2-Status", resp.Status)
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

// clientStream is the client's end of one extended CONNECT stream.
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

// newH2Transport returns an HTTP/2-only transport: over TLS (trusting
// the test server's certificate) or, with tlsConfig nil, h2c with prior
// knowledge.
func newH2Transport(tlsConfig *tls.Config) *http2.Transport {
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
