// Package http2test runs chiws's WebSockets over HTTP/2 (RFC 8441) with a
// real client: golang.org/x/net/http2's Transport sends the extended
// CONNECT, and coder/websocket speaks the protocol on the stream. It is a
// module of its own so that the library does not depend on x/net.
package http2test

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"

	"go.uber.org/goleak"
)

// godebugXConnect enables extended CONNECT in net/http's HTTP/2 server.
// net/http reads GODEBUG once, when the process starts, so TestMain runs
// the test binary again with it set when it is missing.
const godebugXConnect = "http2xconnect=1"

func TestMain(m *testing.M) {
	if godebug := os.Getenv("GODEBUG"); !strings.Contains(godebug, godebugXConnect) {
		if godebug != "" {
			godebug += ","
		}
		cmd := exec.Command(os.Args[0], os.Args[1:]...)
		// The last of duplicate keys wins (os/exec).
		cmd.Env = append(os.Environ(), "GODEBUG="+godebug+godebugXConnect)
		cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
		err := cmd.Run()
		var ee *exec.ExitError
		switch {
		case err == nil:
			os.Exit(0)
		case errors.As(err, &ee) && ee.ExitCode() >= 0:
			os.Exit(ee.ExitCode())
		default:
			fmt.Fprintln(os.Stderr, "http2test: running the tests with GODEBUG="+godebugXConnect+":", err)
			os.Exit(1)
		}
	}
	goleak.VerifyTestMain(m)
}
