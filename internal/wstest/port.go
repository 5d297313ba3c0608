package wstest

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
)

// FreePort returns a loopback TCP port, free when it returns, for a server
// that must be told its port before it binds (a child process such as
// redis-server). Each port+offset must be free too (a Redis Cluster node
// also binds port+10000).
//
// A port picked by listening on ":0" and closing is taken from the
// kernel's ephemeral range, where any outgoing connection or other ":0"
// listener may take it again before the server binds it. Where Linux says
// what that range is and leaves room below it (from port 10000), FreePort
// picks there, so that only another explicit bind can race for the port;
// otherwise it falls back to a port from ":0".
func FreePort(offsets ...int) (int, error) {
	low, ok := ephemeralLow()
	top := low - 1
	for _, off := range offsets {
		top = min(top, low-1-off)
	}
	const bottom = 10000
	for range 100 {
		var port int
		if ok && top > bottom {
			port = bottom + rand.IntN(top-bottom)
		} else {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				return 0, err
			}
			port = ln.Addr().(*net.TCPAddr).Port
			_ = ln.Close()
		}
		if allFree(port, offsets) {
			return port, nil
		}
	}
	return 0, errors.New("wstest: no free loopback port")
}

func allFree(port int, offsets []int) bool {
	var lns []net.Listener
	defer func() {
		for _, ln := range lns {
			_ = ln.Close()
		}
	}()
	for _, off := range append([]int{0}, offsets...) {
		p := port + off
		if p > 65535 {
			return false
		}
		ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
		if err != nil {
			return false
		}
		lns = append(lns, ln)
	}
	return true
}

// ephemeralLow returns the lowest port of Linux's ephemeral range.
func ephemeralLow() (int, bool) {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 0, false
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return 0, false
	}
	low, err := strconv.Atoi(f[0])
	return low, err == nil
}
