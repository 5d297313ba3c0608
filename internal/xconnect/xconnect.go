// Package xconnect runs a test binary with extended CONNECT enabled in
// net/http's HTTP/2 server. net/http reads GODEBUG=http2xconnect=1 once,
// when the process starts, so a TestMain that needs it runs the binary
// again with the setting when it is missing:
//
//	func TestMain(m *testing.M) {
//		xconnect.Reexec()
//		goleak.VerifyTestMain(m)
//	}
package xconnect

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
)

// Setting is the GODEBUG setting that enables extended CONNECT (RFC 8441)
// in net/http's HTTP/2 server.
const Setting = "http2xconnect=1"

// Enabled reports whether this process started with Setting.
func Enabled() bool {
	for _, s := range strings.Split(os.Getenv("GODEBUG"), ",") {
		if strings.TrimSpace(s) == Setting {
			return true
		}
	}
	return false
}

// Reexec returns at once when the process started with Setting. Otherwise
// it runs the same binary with the same arguments and Setting added to
// GODEBUG, and exits with its exit code.
func Reexec() {
	if Enabled() {
		return
	}
	godebug := os.Getenv("GODEBUG")
	if godebug != "" {
		godebug += ","
	}
	cmd := exec.Command(os.Args[0], os.Args[1:]...)
	// os/exec: of duplicate keys in Env, the last one is used.
	cmd.Env = append(os.Environ(), "GODEBUG="+godebug+Setting)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
		os.Exit(0)
	case errors.As(err, &ee) && ee.ExitCode() >= 0:
		os.Exit(ee.ExitCode())
	default:
		fmt.Fprintf(os.Stderr, "running the tests with GODEBUG=%s: %v\n", Setting, err)
		os.Exit(1)
	}
}
