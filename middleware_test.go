package chiws_test

import (
	"testing"

	"github.com/chiws/chiws"
	"github.com/coder/websocket"
	"github.com/go-chi/chi/v5"
)

func TestEchoCoder(t *testing.T) {
	_, srv := server(t, chiws.Options{}, func(r chi.Router) { r.Get("/ws", echo) })
	c := dial(t, wsURL(srv, "/ws"), nil)
	ctx := testCtx(t)
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
		t.Fatal(err)
	}
}
