package main

import (
	"context"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/chiws/chiws"
	"github.com/coder/websocket"
	"github.com/go-chi/chi/v5"
	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestEcho runs the guide's echo handler behind the middleware, as main
// mounts it, and checks the round trip, the close handshake and the close
// log the guide shows.
func TestEcho(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	core, logs := observer.New(zap.DebugLevel)
	ws := chiws.New(chiws.Options{Logger: zap.New(core)})
	r := chi.NewRouter()
	r.Use(ws.Handler)
	r.Get("/ws", echo)
	srv := httptest.NewServer(r)
	defer srv.Close()
	defer ws.Shutdown(ctx)

	c, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(srv.URL, "http")+"/ws", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseNow()
	for _, typ := range []websocket.MessageType{websocket.MessageText, websocket.MessageBinary} {
		if err := c.Write(ctx, typ, []byte("hello")); err != nil {
			t.Fatal(err)
		}
		gotTyp, p, err := c.Read(ctx)
		if err != nil || gotTyp != typ || string(p) != "hello" {
			t.Fatalf("echo: %v %q %v", gotTyp, p, err)
		}
	}
	if err := c.Close(websocket.StatusNormalClosure, "bye"); err != nil {
		t.Fatalf("close handshake: %v", err)
	}

	closed := waitLog(t, logs, "websocket closed")
	fields := closed.ContextMap()
	if fields["closedBy"] != "client" || fields["closeCode"] != int64(1000) || fields["closeReason"] != "bye" {
		t.Errorf("close log fields = %v", fields)
	}
	if fields["messagesIn"] != uint64(2) || fields["messagesOut"] != uint64(2) {
		t.Errorf("message counts = %v in, %v out; want 2, 2", fields["messagesIn"], fields["messagesOut"])
	}
	if st := ws.Stats(); st.Accepted != 1 || st.EarlyReturns != 0 || st.Active != 0 {
		t.Errorf("Stats = %+v", st)
	}
}

func waitLog(t *testing.T, logs *observer.ObservedLogs, msg string) observer.LoggedEntry {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if e := logs.FilterMessage(msg).All(); len(e) > 0 {
			return e[0]
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %q log entry", msg)
		}
		time.Sleep(5 * time.Millisecond) // polling a log sink, not synchronising
	}
}
