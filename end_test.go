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

	"github.com/chiws/chiws"
	"github.com/chiws/chiws/internal/endmatrix"
	"github.com/coder/websocket"
	"github.com/go-chi/chi/v5"
	"go.uber.org/zap"
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

// valErrs is a cause whose dynamic type is not comparable: == on two of
// them panics, and so does a map lookup with one.
type valErrs []string

func (v valErrs) Error() string { return strings.Join(v, "; ") }

// TestCloseWith: CloseWith sends its code and reason, and records its
// cause: context.Cause matches it and ErrClosedByServer and carries the
// code, and the close log says closedBy "server" with the cause's text.
// A cause of a type that is not comparable is as good as any.
func TestCloseWith(t *testing.T) {
	errTooSlow := errors.New("too slow for the room")
	tests := []struct {
		name  string
		cause error
		is    func(err error) bool // whether err matches the cause
	}{
		{"comparable cause", errTooSlow, func(err error) bool { return errors.Is(err, errTooSlow) }},
		{"cause not comparable", valErrs{"name: required", "age: negative"}, func(err error) bool {
			var v valErrs
			// errors.Is cannot compare it, and must not panic trying.
			return errors.As(err, &v) && v.Error() == "name: required; age: negative" &&
				!errors.Is(err, valErrs{"name: required", "age: negative"})
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			type result struct{ err, cause error }
			got := make(chan result, 1)
			_, srv, logs := relServer(t, chiws.Options{}, nil, func(r chi.Router) {
				r.Get("/ws", func(w http.ResponseWriter, r *http.Request) {
					c, err := chiws.Accept(w, r, nil)
					if err != nil {
						return
					}
					err = c.CloseWith(tt.cause, 4003, "go away")
					got <- result{err, context.Cause(c.Context())}
				})
			})
			ctx := testCtx(t)
			c := dial(t, wsURL(srv, "/ws"), nil)
			_, _, err := c.Read(ctx)
			var ce websocket.CloseError
			if !errors.As(err, &ce) || ce.Code != 4003 || ce.Reason != "go away" {
				t.Errorf("client read %v, want close 4003 \"go away\"", err)
			}
			var res result
			select {
			case res = <-got:
			case <-ctx.Done():
				t.Fatal("CloseWith never returned")
			}
			if res.err != nil {
				t.Errorf("CloseWith = %v", res.err)
			}
			if !tt.is(res.cause) {
				t.Errorf("cause %v does not match %v", res.cause, tt.cause)
			}
			if !errors.Is(res.cause, chiws.ErrClosedByServer) {
				t.Errorf("cause %v does not match ErrClosedByServer", res.cause)
			}
			for _, s := range []error{chiws.ErrClosedByPeer, chiws.ErrShuttingDown, chiws.ErrHandlerReturned, chiws.ErrConnectionLost} {
				if errors.Is(res.cause, s) {
					t.Errorf("cause %v matches %v too", res.cause, s)
				}
			}
			if got := websocket.CloseStatus(res.cause); got != 4003 {
				t.Errorf("CloseStatus(cause) = %d, want 4003", got)
			}
			waitFor(t, "close log", func() bool { return logs.FilterMessage("websocket closed").Len() == 1 })
			f := logs.FilterMessage("websocket closed").All()[0].ContextMap()
			if f["closedBy"] != "server" || f["closeCode"] != int64(4003) || f["closeReason"] != "go away" || f["cause"] != tt.cause.Error() {
				t.Errorf("close log %v, want closedBy server, closeCode 4003, closeReason \"go away\", cause %q", f, tt.cause.Error())
			}
		})
	}
}

// TestAddLogFields: fields added after Accept are in the lines logged
// about the socket from then on: the early-return warning and the close
// log (not the accept log, written before).
func TestAddLogFields(t *testing.T) {
	logger, logs := observedLogger()
	ws, srv := server(t, chiws.Options{Logger: logger}, func(r chi.Router) {
		r.Get("/ws", func(w http.ResponseWriter, r *http.Request) {
			c, err := chiws.Accept(w, r, nil)
			if err != nil {
				return
			}
			c.AddLogFields(zap.String("user", "ada"))
			c.AddLogFields(zap.Int("tenant", 7))
			// An early return: warned about, then closed with 1011.
		})
	})
	c := dial(t, wsURL(srv, "/ws"), nil)
	if _, _, err := c.Read(testCtx(t)); websocket.CloseStatus(err) != websocket.StatusInternalError {
		t.Fatalf("client read %v, want 1011", err)
	}
	waitFor(t, "close log", func() bool { return logs.FilterMessage("websocket closed").Len() == 1 })
	for _, msg := range []string{"returned with the socket open", "websocket closed"} {
		entries := logs.FilterMessageSnippet(msg).All()
		if len(entries) != 1 {
			t.Errorf("%d logs %q, want 1", len(entries), msg)
			continue
		}
		if f := entries[0].ContextMap(); f["user"] != "ada" || f["tenant"] != int64(7) || f["route"] != "/ws" {
			t.Errorf("%q logged %v, want user ada and tenant 7 after the request's fields", msg, f)
		}
	}
	if f := logs.FilterMessage("websocket accepted").All(); len(f) != 1 || f[0].ContextMap()["user"] != nil {
		t.Errorf("accept log %v, want one without the fields added after it", f)
	}
	if st := ws.Stats(); st.EarlyReturns != 1 {
		t.Errorf("EarlyReturns = %d, want 1", st.EarlyReturns)
	}
}
