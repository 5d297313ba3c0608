package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/chiws/chiws/example/app"
	"github.com/chiws/chiws/internal/wstest"
	"github.com/coder/websocket"
	"go.uber.org/goleak"
	"go.uber.org/zap"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const testTimeout = 60 * time.Second

func TestParseFlags(t *testing.T) {
	tests := []struct {
		name    string
		give    []string
		wantErr bool
		check   func(t *testing.T, c config)
	}{
		{name: "defaults", check: func(t *testing.T, c config) {
			if c.addr != "localhost:5000" || c.logLevel != "info" || c.logFormat != "console" {
				t.Errorf("defaults = %+v", c)
			}
			if c.app.KeepAliveInterval != 2*time.Minute || c.app.KeepAliveTimeout != 30*time.Second {
				t.Errorf("keep-alive defaults = %v, %v", c.app.KeepAliveInterval, c.app.KeepAliveTimeout)
			}
		}},
		{name: "origins", give: []string{"-allowed-origins", " https://a.example, http://localhost:* ,"},
			check: func(t *testing.T, c config) {
				want := []string{"https://a.example", "http://localhost:*"}
				if strings.Join(c.app.AllowedOrigins, "|") != strings.Join(want, "|") {
					t.Errorf("AllowedOrigins = %q, want %q", c.app.AllowedOrigins, want)
				}
			}},
		{name: "keep-alive off", give: []string{"-keepalive", "-1s"}, check: func(t *testing.T, c config) {
			if c.app.KeepAliveInterval >= 0 {
				t.Errorf("KeepAliveInterval = %v", c.app.KeepAliveInterval)
			}
		}},
		{name: "compression and subprotocols", give: []string{"-compression", "no-context-takeover", "-subprotocols", "chat, v2"},
			check: func(t *testing.T, c config) {
				if c.app.CompressionMode != websocket.CompressionNoContextTakeover || strings.Join(c.app.Subprotocols, "|") != "chat|v2" {
					t.Errorf("CompressionMode %v, Subprotocols %q", c.app.CompressionMode, c.app.Subprotocols)
				}
			}},
		{name: "tls-cert implies tls", give: []string{"-tls-cert", "c.pem", "-tls-key", "k.pem"}, check: func(t *testing.T, c config) {
			if !c.tls {
				t.Error("-tls-cert without -tls does not serve TLS")
			}
		}},
		{name: "bad compression", give: []string{"-compression", "max"}, wantErr: true},
		{name: "cert without key", give: []string{"-tls-cert", "c.pem"}, wantErr: true},
		{name: "stray argument", give: []string{"extra"}, wantErr: true},
		{name: "unknown flag", give: []string{"-nope"}, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := parseFlags(tt.give, io.Discard)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tt.wantErr)
			}
			if tt.check != nil {
				tt.check(t, c)
			}
		})
	}
}

func TestRunHelp(t *testing.T) {
	var out bytes.Buffer
	err := run(context.Background(), []string{"-h"}, &out, nil)
	if !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("run -h = %v, want flag.ErrHelp", err)
	}
	for _, f := range []string{"-addr", "-allowed-origins", "-keepalive", "-keepalive-timeout",
		"-read-limit", "-max-connections", "-log-level", "-log-format"} {
		if !strings.Contains(out.String(), f+" ") {
			t.Errorf("help lacks %s:\n%s", f, out.String())
		}
	}
}

func TestRunInvalid(t *testing.T) {
	tests := [][]string{
		{"-log-level", "trace"},
		{"-log-format", "xml"},
		{"-allowed-origins", "https://a.example/path"},
		{"-read-limit", "-5"},
		{"-addr", "256.0.0.1:bad"},
		{"-nats-routes", "nats://127.0.0.1:1"},
		{"-nats-url", "nats://127.0.0.1:1", "-redis", "127.0.0.1:1"},
		{"-nats-cluster", "127.0.0.1:0", "-nats-routes", "http://not-nats"},
		{"-nats-url", "nats://127.0.0.1:1"},
		{"-redis", "redis://127.0.0.1:1/notadb"},
		{"-nats-route-user", "u"},
		{"-nats-cluster", "127.0.0.1:0", "-nats-route-tls-cert", "cert.pem"},
		{"-nats-cluster", "127.0.0.1:0", "-nats-route-user", "u"}, // no password in the environment
	}
	// A cancelled context makes run return at once if it does start.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	for _, give := range tests {
		t.Run(strings.Join(give, " "), func(t *testing.T) {
			if err := run(ctx, append([]string{"-addr", "127.0.0.1:0"}, give...), io.Discard, nil); err == nil {
				t.Error("run accepted invalid flags")
			}
		})
	}
}

// TestRunGracefulStop runs the command in-process: cancelling its context
// (what SIGINT does in main) closes open sockets with 1001 and run returns
// nil.
func TestRunGracefulStop(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var logs wstest.SyncBuffer
	done := make(chan error, 1)
	addr := startRun(ctx, t, []string{"-addr", "127.0.0.1:0", "-log-level", "debug", "-keepalive", "1s"}, &logs, done)
	observeGoingAway(t, addr, cancel)
	if err := <-done; err != nil {
		t.Fatalf("run = %v, want nil; logs:\n%s", err, logs.String())
	}
	for _, want := range []string{"listening", "shutting down", "stopped"} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("logs lack %q:\n%s", want, logs.String())
		}
	}
}

// TestRunTLS serves the application over HTTPS with a self-signed
// certificate made at start, with the subprotocol and compression flags:
// a client that trusts nothing but skips verification gets the echo, the
// negotiated subprotocol and permessage-deflate.
func TestRunTLS(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var logs wstest.SyncBuffer
	done := make(chan error, 1)
	addr := startRun(ctx, t, []string{"-addr", "127.0.0.1:0", "-tls", "-subprotocols", "chat",
		"-compression", "context-takeover"}, &logs, done)
	tr := &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}} // self-signed
	defer tr.CloseIdleConnections()
	dctx, dcancel := context.WithTimeout(context.Background(), testTimeout)
	defer dcancel()
	c, resp, err := websocket.Dial(dctx, "wss://"+addr+"/ws", &websocket.DialOptions{
		HTTPClient:      &http.Client{Transport: tr},
		HTTPHeader:      http.Header{"Origin": {"https://" + addr}},
		Subprotocols:    []string{"chat"},
		CompressionMode: websocket.CompressionContextTakeover,
	})
	if err != nil {
		t.Fatalf("dial over TLS: %v\n%s", err, logs.String())
	}
	defer c.CloseNow()
	if c.Subprotocol() != "chat" || !strings.Contains(resp.Header.Get("Sec-WebSocket-Extensions"), "permessage-deflate") {
		t.Errorf("subprotocol %q, extensions %q", c.Subprotocol(), resp.Header.Get("Sec-WebSocket-Extensions"))
	}
	if err := c.Write(dctx, websocket.MessageText, []byte("over TLS")); err != nil {
		t.Fatal(err)
	}
	if _, p, err := c.Read(dctx); err != nil || string(p) != "over TLS" {
		t.Fatalf("echo = %q, %v", p, err)
	}
	c.Close(websocket.StatusNormalClosure, "")
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("run = %v", err)
	}
	if !strings.Contains(logs.String(), "https://") || !strings.Contains(logs.String(), "WebSockets over HTTP/2") {
		t.Errorf("logs lack the https URL or the HTTP/2 WebSockets state:\n%s", logs.String())
	}
}

// observeGoingAway connects an echo and a broadcast client to addr, checks
// the echo works, calls stop and asserts both clients see 1001.
func observeGoingAway(t *testing.T, addr string, stop func()) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	var conns []*websocket.Conn
	for _, path := range []string{"/ws", "/broadcast"} {
		c, _, err := websocket.Dial(ctx, "ws://"+addr+path, nil)
		if err != nil {
			t.Fatalf("dial %s: %v", path, err)
		}
		defer c.CloseNow()
		conns = append(conns, c)
	}
	if err := conns[0].Write(ctx, websocket.MessageText, []byte("ping")); err != nil {
		t.Fatal(err)
	}
	if _, p, err := conns[0].Read(ctx); err != nil || string(p) != "ping" {
		t.Fatalf("echo = %q, %v", p, err)
	}
	if _, p, err := conns[1].Read(ctx); err != nil || !strings.HasPrefix(string(p), app.Welcome) {
		t.Fatalf("room's first message = %q, %v; want the welcome", p, err)
	}
	stop()
	for _, c := range conns {
		_, _, err := c.Read(ctx)
		if got := websocket.CloseStatus(err); got != websocket.StatusGoingAway {
			t.Errorf("client saw %v, want close 1001", err)
		}
	}
}

// TestBinarySignal builds the command and stops it with SIGINT and SIGTERM,
// as an operator or a container runtime would: open sockets get 1001 and
// the process exits 0.
func TestBinarySignal(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary; skipped with -short")
	}
	gobin, err := exec.LookPath("go")
	if err != nil {
		gobin = filepath.Join(os.Getenv("GOROOT"), "bin", "go")
	}
	bin := filepath.Join(t.TempDir(), "example")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	build := exec.CommandContext(ctx, gobin, "build", "-o", bin, ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	for _, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGTERM} {
		t.Run(sig.String(), func(t *testing.T) {
			cmd := exec.CommandContext(ctx, bin, "-addr", "127.0.0.1:0", "-log-format", "json")
			stderr, err := cmd.StderrPipe()
			if err != nil {
				t.Fatal(err)
			}
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()

			// The first log line says where it listens.
			lines := bufio.NewScanner(stderr)
			var addr string
			var logs strings.Builder
			for addr == "" && lines.Scan() {
				logs.WriteString(lines.Text() + "\n")
				var entry struct{ Msg, Addr string }
				if json.Unmarshal(lines.Bytes(), &entry) == nil && entry.Msg == "listening" {
					addr = entry.Addr
				}
			}
			if addr == "" {
				t.Fatalf("no listening line; output:\n%s", logs.String())
			}
			rest := make(chan string, 1)
			go func() { // ends at the process's EOF
				b, _ := io.ReadAll(stderr)
				rest <- string(b)
			}()
			observeGoingAway(t, addr, func() {
				if err := cmd.Process.Signal(sig); err != nil {
					t.Fatal(err)
				}
			})
			tail := <-rest
			if err := cmd.Wait(); err != nil {
				t.Fatalf("exit: %v; logs:\n%s%s", err, logs.String(), tail)
			}
			if !strings.Contains(tail, `"stopped"`) {
				t.Errorf("no stopped line; logs:\n%s", tail)
			}
		})
	}
}

// TestTwoInstancesShareTheRoom runs two instances as the README shows, with
// embedded NATS servers joined by a route: a client of one and a client of
// the other are in the same /broadcast room.
func TestTwoInstancesShareTheRoom(t *testing.T) {
	// Both route listeners take a port the kernel picks (a port reserved
	// and released beforehand may be taken again before the server binds
	// it); the second instance learns the first one's from its log.
	twoInstances(t, []string{"-addr", "127.0.0.1:0", "-log-format", "json", "-nats-cluster", "127.0.0.1:0"},
		func(firstLog string) []string {
			return []string{"-addr", "127.0.0.1:0", "-nats-cluster", "127.0.0.1:0", "-nats-routes", routesFrom(t, firstLog)}
		})
}

// TestTwoInstancesShareTheRoomWithRouteAuth does the same with the routes'
// user and password (from the environment) and a route ping interval.
func TestTwoInstancesShareTheRoomWithRouteAuth(t *testing.T) {
	t.Setenv(routePasswordEnv, "s3cret")
	auth := []string{"-nats-route-user", "chiws", "-nats-route-ping", "1s", "-nats-name", "second"}
	twoInstances(t, append([]string{"-addr", "127.0.0.1:0", "-log-format", "json", "-nats-cluster", "127.0.0.1:0",
		"-nats-name", "first"}, auth[:4]...),
		func(firstLog string) []string {
			return append([]string{"-addr", "127.0.0.1:0", "-nats-cluster", "127.0.0.1:0", "-nats-routes", routesFrom(t, firstLog)}, auth...)
		})
}

// routesFrom returns the route URL the embedded server logged at start.
func routesFrom(t *testing.T, jsonLog string) string {
	t.Helper()
	for _, line := range strings.Split(jsonLog, "\n") {
		var e struct {
			Msg        string `json:"msg"`
			RoutesFrom string `json:"routesFrom"`
		}
		if json.Unmarshal([]byte(line), &e) == nil && e.RoutesFrom != "" {
			return e.RoutesFrom
		}
	}
	t.Fatalf("no routesFrom in the first instance's log:\n%s", jsonLog)
	return ""
}

// TestTwoInstancesShareTheRoomOnRedis does the same with -redis, when
// redis-server is installed.
func TestTwoInstancesShareTheRoomOnRedis(t *testing.T) {
	if _, err := exec.LookPath("redis-server"); err != nil {
		t.Skip("redis-server is not installed: apt-get install -y redis-server")
	}
	p, err := wstest.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	port := strconv.Itoa(p)
	addr := net.JoinHostPort("127.0.0.1", port)
	cmd := exec.Command("redis-server", "--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	// run pings Redis at start; wait until the server listens.
	deadline := time.Now().Add(testTimeout)
	tick := time.NewTicker(10 * time.Millisecond) // polling a starting process
	defer tick.Stop()
	for {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("redis-server not listening")
		}
		<-tick.C
	}
	twoInstances(t, []string{"-addr", "127.0.0.1:0", "-redis", addr},
		func(string) []string { return []string{"-addr", "127.0.0.1:0", "-redis", addr} })
}

// twoInstances runs the command with first, then with the arguments
// second makes from the first instance's log once it is ready, and checks
// that a client of the first and a client of the second are in the same
// room.
func twoInstances(t *testing.T, first []string, second func(firstLog string) []string) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var addrs []string
	done := make(chan error, 2)
	var firstLog wstest.SyncBuffer
	started := 0
	defer func() {
		cancel()
		for range started {
			if err := <-done; err != nil {
				t.Errorf("run: %v", err)
			}
		}
	}()
	for i := range 2 {
		a, out := first, io.Writer(&firstLog)
		if i == 1 {
			a, out = second(firstLog.String()), io.Discard
		}
		addrs = append(addrs, startRun(ctx, t, a, out, done))
		started++ // its result is received by the deferred wait
	}

	dctx, dcancel := context.WithTimeout(context.Background(), testTimeout)
	defer dcancel()
	var conns []*websocket.Conn
	for _, addr := range addrs {
		c, _, err := websocket.Dial(dctx, "ws://"+addr+"/broadcast", nil)
		if err != nil {
			t.Fatal(err)
		}
		defer c.CloseNow()
		conns = append(conns, c)
	}
	got := make(chan string, 1024)
	go func() { // ends when the connection closes (deferred CloseNow or shutdown)
		for {
			_, p, err := conns[1].Read(context.Background())
			if err != nil {
				close(got)
				return
			}
			got <- string(p)
		}
	}()
	// The route and the room's interest reach the other server
	// asynchronously: send until the other instance's client hears.
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for i := 0; ; i++ {
		if err := conns[0].Write(dctx, websocket.MessageText, []byte(fmt.Sprintf("hello %d", i))); err != nil {
			t.Fatal(err)
		}
		select {
		case m, ok := <-got:
			if !ok {
				t.Fatal("connection to the second instance closed")
			}
			if strings.HasPrefix(m, app.Welcome) {
				continue
			}
			if !strings.HasPrefix(m, "hello ") {
				t.Fatalf("second instance's client got %q", m)
			}
			return
		case <-tick.C:
		case <-dctx.Done():
			t.Fatal("the two instances never shared the room")
		}
	}
}

// startRun runs the command with args in a goroutine, which ends when ctx
// is cancelled and sends run's result to done, and returns the address it
// listens on. If run fails first, the test fails, with that result taken
// from done.
func startRun(ctx context.Context, t *testing.T, args []string, out io.Writer, done chan error) string {
	t.Helper()
	ready := make(chan string, 1)
	go func() { done <- run(ctx, args, out, func(addr string) { ready <- addr }) }()
	select {
	case addr := <-ready:
		return addr
	case err := <-done:
		t.Fatalf("run %q: %v", args, err)
		return ""
	}
}

// TestServerSettings checks that the server is configured as
// docs/http2.md recommends, and reads the HTTP/2 windows back from what a
// client receives: the stream window in the server's first SETTINGS frame,
// and the connection window from the WINDOW_UPDATE that follows it.
// (http2test's TestFlowControlUnreadSocket shows what these windows buy: a
// socket flooded by its client while its handler does not read leaves the
// other sockets of the connection alone.)
func TestServerSettings(t *testing.T) {
	const (
		wantStream = 64 << 10
		wantConn   = 4<<20 - 1
	)
	srv := newServer(http.NotFoundHandler(), zap.NewNop())
	if srv.ReadHeaderTimeout <= 0 || srv.IdleTimeout <= 0 {
		t.Errorf("ReadHeaderTimeout %v, IdleTimeout %v: want both set", srv.ReadHeaderTimeout, srv.IdleTimeout)
	}
	if h2 := srv.HTTP2; h2 == nil || h2.MaxReceiveBufferPerStream != wantStream ||
		h2.MaxReceiveBufferPerConnection != wantConn {
		t.Fatalf("HTTP2 = %+v, want docs/http2.md's windows", srv.HTTP2)
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var logs wstest.SyncBuffer
	done := make(chan error, 1)
	addr := startRun(ctx, t, []string{"-addr", "127.0.0.1:0", "-tls"}, &logs, done)
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("run = %v", err)
		}
	}()
	c, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h2"}}) // self-signed
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if p := c.ConnectionState().NegotiatedProtocol; p != "h2" {
		t.Fatalf("ALPN %q, want h2", p)
	}
	_ = c.SetDeadline(time.Now().Add(testTimeout))
	// The client preface and an empty SETTINGS frame.
	if _, err := io.WriteString(c, "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00"); err != nil {
		t.Fatal(err)
	}
	stream, conn := -1, 65535 // RFC 9113's initial windows, until the server says otherwise
	br := bufio.NewReader(c)
	for seenSettings, seenUpdate := false, false; !seenSettings || !seenUpdate; {
		var hdr [9]byte
		if _, err := io.ReadFull(br, hdr[:]); err != nil {
			t.Fatalf("reading the server's frames: %v", err)
		}
		length := int(hdr[0])<<16 | int(hdr[1])<<8 | int(hdr[2])
		typ, flags := hdr[3], hdr[4]
		streamID := binary.BigEndian.Uint32(hdr[5:]) & 0x7fffffff
		payload := make([]byte, length)
		if _, err := io.ReadFull(br, payload); err != nil {
			t.Fatal(err)
		}
		switch {
		case typ == 0x4 && flags&0x1 == 0: // SETTINGS, not an ACK
			seenSettings = true
			for p := payload; len(p) >= 6; p = p[6:] {
				if id := binary.BigEndian.Uint16(p); id == 0x4 { // INITIAL_WINDOW_SIZE
					stream = int(binary.BigEndian.Uint32(p[2:]))
				}
			}
		case typ == 0x8 && streamID == 0: // WINDOW_UPDATE for the connection
			seenUpdate = true
			conn += int(binary.BigEndian.Uint32(payload) & 0x7fffffff)
		case typ == 0x8 || typ == 0x4 || typ == 0x6: // other updates, ACKs, PINGs
		default:
			t.Fatalf("unexpected frame type %#x before the windows", typ)
		}
	}
	if stream != wantStream || conn != wantConn {
		t.Errorf("windows: stream %d, connection %d; want %d and %d", stream, conn, wantStream, wantConn)
	}
}
