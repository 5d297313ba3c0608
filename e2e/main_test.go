// Package e2e holds end-to-end tests of the example application: a real
// headless Chromium driven with chromedp, and a real nginx in front of the
// application. They need Debian's chromium and nginx packages:
//
//	apt-get install -y chromium nginx
//
// Without them the tests skip, unless CHIWS_E2E=1 is set (as in CI), in
// which case they fail.
package e2e

import (
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/chiws/chiws/internal/xconnect"
	"go.uber.org/goleak"
)

// TestMain runs the tests with GODEBUG=http2xconnect=1, which net/http
// reads only when the process starts, so that the HTTP/2 browser test's
// server offers WebSockets over HTTP/2.
func TestMain(m *testing.M) {
	xconnect.Reexec()
	goleak.VerifyTestMain(m)
}

// required reports whether missing tools fail the tests instead of
// skipping them.
func required() bool { return os.Getenv("CHIWS_E2E") == "1" }

// findTool returns the first of names found on PATH or as an absolute path.
// When none is found the test skips, or fails under CHIWS_E2E=1.
func findTool(t *testing.T, pkg string, names ...string) string {
	t.Helper()
	for _, n := range names {
		if p, err := exec.LookPath(n); err == nil {
			return p
		}
	}
	msg := pkg + " not found (tried " + strings.Join(names, ", ") + "); install it with: apt-get install -y " + pkg
	if required() {
		t.Fatal(msg + " (CHIWS_E2E=1 makes this a failure)")
	}
	t.Skip(msg)
	return ""
}
