// Command echoclient is the client of docs/getting-started.md: it sends one
// message to the echo server and prints the reply.
package main

import (
	"context"
	"fmt"
	"io"
	"log"
	"os"
	"time"

	"github.com/coder/websocket"
)

func main() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := run(ctx, os.Stdout, "ws://localhost:5000/ws", "hello"); err != nil {
		log.Fatal(err)
	}
}

func run(ctx context.Context, out io.Writer, url, msg string) error {
	c, _, err := websocket.Dial(ctx, url, nil)
	if err != nil {
		return err
	}
	defer c.CloseNow()

	if err := c.Write(ctx, websocket.MessageText, []byte(msg)); err != nil {
		return err
	}
	_, reply, err := c.Read(ctx)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "%s\n", reply)
	return c.Close(websocket.StatusNormalClosure, "bye")
}
