package chiws_test

import (
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/chiws/chiws"
	"github.com/chiws/chiws/internal/wstest"
	"github.com/go-chi/chi/v5"
)

// extendedConnect returns an HTTP/2 extended CONNECT for a WebSocket (RFC
// 8441), as net/http's HTTP/2 server hands it to a handler; edit modifies
// it. The tests over a real HTTP/2 connection are in http2test/.
func extendedConnect(edit func(r *http.Request)) *http.Request {
	r := httptest.NewRequest(http.MethodGet, "http://server.com/ws", nil)
	r.Method = http.MethodConnect // with :path, as HTTP/2 carries it
	r.Proto, r.ProtoMajor, r.ProtoMinor = "HTTP/2.0", 2, 0
	r.Header.Set(":protocol", "websocket")
	r.Header.Set("Sec-WebSocket-Version", "13")
	r.Header.Set("Sec-WebSocket-Protocol", "v1, v2")
	r.ContentLength = -1
	if edit != nil {
		edit(r)
	}
	return r
}

// TestExtendedConnectRecognised: the middleware marks an extended CONNECT
// as a WebSocket request and hands it to a GET route; it applies the
// version check and the origin policy as for HTTP/1.1; a CONNECT for
// another protocol, or an HTTP/1.1 CONNECT, passes through untouched.
func TestExtendedConnectRecognised(t *testing.T) {
	tests := []struct {
		name       string
		edit       func(r *http.Request)
		wantRoute  bool // the GET route ran
		wantWS     bool
		wantStatus int
	}{
		{name: "websocket", wantRoute: true, wantWS: true, wantStatus: http.StatusTeapot},
		{name: "version 8", edit: func(r *http.Request) { r.Header.Set("Sec-WebSocket-Version", "8") }, wantStatus: http.StatusUpgradeRequired},
		{name: "cross-site origin", edit: func(r *http.Request) { r.Header.Set("Origin", "https://evil.example") }, wantStatus: http.StatusForbidden},
		{name: "same origin", edit: func(r *http.Request) { r.Header.Set("Origin", "http://server.com") }, wantRoute: true, wantWS: true, wantStatus: http.StatusTeapot},
		{name: "other protocol", edit: func(r *http.Request) { r.Header.Set(":protocol", "webtransport") }, wantStatus: http.StatusMethodNotAllowed},
		{name: "HTTP/1.1 CONNECT", edit: func(r *http.Request) { r.Proto, r.ProtoMajor, r.ProtoMinor = "HTTP/1.1", 1, 1 }, wantStatus: http.StatusMethodNotAllowed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ws := chiws.New(chiws.Options{})
			var ran, gotWS bool
			var protocols []string
			r := chi.NewRouter()
			r.Use(ws.Handler)
			r.Get("/ws", func(w http.ResponseWriter, r *http.Request) {
				ran, gotWS, protocols = true, chiws.IsWebSocketRequest(r), chiws.RequestedProtocols(r)
				w.WriteHeader(http.StatusTeapot)
			})
			rec := httptest.NewRecorder()
			r.ServeHTTP(rec, extendedConnect(tt.edit))
			if ran != tt.wantRoute || gotWS != tt.wantWS || rec.Code != tt.wantStatus {
				t.Fatalf("route ran %v, IsWebSocketRequest %v, status %d; want %v, %v, %d",
					ran, gotWS, rec.Code, tt.wantRoute, tt.wantWS, tt.wantStatus)
			}
			if tt.wantWS && strings.Join(protocols, ",") != "v1,v2" {
				t.Errorf("RequestedProtocols = %v", protocols)
			}
			if tt.wantStatus == http.StatusUpgradeRequired && rec.Header().Get("Sec-WebSocket-Version") != "13" {
				t.Errorf("426 without Sec-WebSocket-Version: 13")
			}
		})
	}
}

// TestExtendedConnectProtocolHeader pins what the middleware relies on and
// net/http does not document: its HTTP/2 server passes the :protocol
// pseudo-header of an extended CONNECT in r.Header. net/http's client
// cannot send one (it rejects the header name) and this module may not use
// golang.org/x/net, so a hand-made h2c client sends it (wstest.DialH2C).
// The route takes every method, so that a CONNECT the middleware did not
// recognise reaches it too, and says so.
func TestExtendedConnectProtocolHeader(t *testing.T) {
	type seen struct {
		method    string
		ws        bool
		protocols []string
	}
	got := make(chan seen, 1)
	_, srv := server(t, chiws.Options{}, func(r chi.Router) {
		r.HandleFunc("/ws", func(w http.ResponseWriter, r *http.Request) {
			got <- seen{r.Method, chiws.IsWebSocketRequest(r), chiws.RequestedProtocols(r)}
		})
	})
	c, err := wstest.DialH2C(hostOf(srv), time.Now().Add(testTimeout))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if !c.ExtendedConnect() {
		t.Fatalf("the server's SETTINGS %v lack ENABLE_CONNECT_PROTOCOL = 1 (GODEBUG=%q)", c.Settings, os.Getenv("GODEBUG"))
	}
	if err := c.WebSocketConnect(1, hostOf(srv), "/ws", wstest.H2Field{Name: "sec-websocket-protocol", Value: "chat, superchat"}); err != nil {
		t.Fatal(err)
	}
	select {
	case s := <-got:
		if !s.ws || s.method != http.MethodGet {
			t.Fatalf("the route saw a %s, IsWebSocketRequest %v: net/http no longer passes :protocol in r.Header?", s.method, s.ws)
		}
		if strings.Join(s.protocols, ",") != "chat,superchat" {
			t.Errorf("RequestedProtocols = %q", s.protocols)
		}
	case <-testCtx(t).Done():
		t.Fatal("the route never saw the extended CONNECT")
	}
	// The server took the request as valid: it answers the stream with
	// HEADERS (the middleware's 501 for a route that did not accept), not
	// with a reset or a GOAWAY.
	for {
		f, err := c.ReadFrame()
		if err != nil {
			t.Fatalf("waiting for the answer on stream 1: %v", err)
		}
		if f.Type == wstest.H2FrameGoAway {
			t.Fatalf("GOAWAY % x", f.Payload)
		}
		if f.Stream == 1 {
			if f.Type != wstest.H2FrameHeaders {
				t.Fatalf("stream 1 answered with frame type %#x, want HEADERS", f.Type)
			}
			break
		}
	}
}
