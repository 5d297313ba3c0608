// Package http2test runs chiws's WebSockets over HTTP/2 (RFC 8441) with a
// real client: golang.org/x/net/http2's Transport sends the extended
// CONNECT, and coder/websocket speaks the protocol on the stream. It is a
// module of its own so that the library does not depend on x/net.
package http2test

import (
	"testing"

	"github.com/chiws/chiws/internal/xconnect"
	"go.uber.org/goleak"
)

// TestMain runs the tests with GODEBUG=http2xconnect=1, which net/http
// reads only when the process starts.
func TestMain(m *testing.M) {
	xconnect.Reexec()
	goleak.VerifyTestMain(m)
}
