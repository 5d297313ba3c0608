package chiws_test

import (
	"context"
	"errors"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/chiws/chiws/internal/endmatrix"
	"github.com/coder/websocket"
)

// TestEndMatrix runs the end matrix (internal/endmatrix, the
// specification of how a socket ends) over HTTP/1.1; http2test runs it
// over HTTP/2.
func TestEndMatrix(t *testing.T) {
	endmatrix.Run(t, "HTTP/1.1", dialHTTP1)
}

// TestEndTable: docs/lifecycle.md's end table is the end matrix's rows,
// rendered (endmatrix.Markdown), so that the guide says what the tests
// check.
func TestEndTable(t *testing.T) {
	const doc = "docs/lifecycle.md"
	b, err := os.ReadFile(doc)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(b), "\n")
	i := slices.Index(lines, endmatrix.TableMarker)
	if i < 0 {
		t.Fatalf("%s has no %s line", doc, endmatrix.TableMarker)
	}
	var got []string
	for _, l := range lines[i+1:] {
		if !strings.HasPrefix(l, "|") {
			break
		}
		got = append(got, l)
	}
	want := strings.Split(strings.TrimSuffix(endmatrix.Markdown(), "\n"), "\n")
	if slices.Equal(got, want) {
		return
	}
	n := 0
	for n < min(len(got), len(want)) && got[n] == want[n] {
		n++
	}
	line := func(l []string) string {
		if n < len(l) {
			return l[n]
		}
		return "(end of the table)"
	}
	t.Errorf("%s:%d: the end table differs from internal/endmatrix's rows:\n got: %s\nwant: %s\n\nThe table, from the rows:\n%s",
		doc, i+2+n, line(got), line(want), endmatrix.Markdown())
}

// dialHTTP1 dials a WebSocket over HTTP/1.1 with coder/websocket, keeping
// the TCP connection for the rows that write raw frames on it, close it
// or reset it.
func dialHTTP1(ctx context.Context, t *testing.T, url string) (*endmatrix.Client, error) {
	var (
		mu  sync.Mutex
		tcp *net.TCPConn
		tap *endmatrix.Tap
	)
	tr := &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
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
			tcp = c.(*net.TCPConn)
			var tapped net.Conn
			tapped, tap = endmatrix.TapConn(c)
			return tapped, nil
		},
	}
	ws, _, err := websocket.Dial(ctx, url, &websocket.DialOptions{HTTPClient: &http.Client{Transport: tr}})
	if err != nil {
		tr.CloseIdleConnections()
		return nil, err
	}
	t.Cleanup(func() {
		ws.CloseNow()
		tcp.Close()
		tr.CloseIdleConnections()
	})
	return &endmatrix.Client{
		WS:  ws,
		Raw: tcp,
		Fin: tcp.Close,
		Reset: func() error {
			if err := tcp.SetLinger(0); err != nil {
				return err
			}
			return tcp.Close()
		},
		Tap: tap,
	}, nil
}
