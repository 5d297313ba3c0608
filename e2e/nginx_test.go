package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/chiws/chiws/example/app"
	"github.com/chromedp/chromedp"
	"github.com/coder/websocket"
)

// proxiesDoc is the guide whose nginx configuration these tests run.
const proxiesDoc = "../docs/proxies.md"

// nginxConfig extracts the first ```nginx block of docs/proxies.md and
// points it at the test's ports, with proxy_read_timeout shortened to
// readTimeout. Every substitution must apply exactly once, so that an edit
// of the documented configuration cannot silently escape the test.
func nginxConfig(t *testing.T, listen, upstream, readTimeout string, extra ...[2]string) string {
	t.Helper()
	doc, err := os.ReadFile(proxiesDoc)
	if err != nil {
		t.Fatal(err)
	}
	_, after, ok := strings.Cut(string(doc), "\n```nginx\n")
	if !ok {
		t.Fatalf("%s has no ```nginx block", proxiesDoc)
	}
	block, _, ok := strings.Cut(after, "\n```")
	if !ok {
		t.Fatalf("%s: unterminated ```nginx block", proxiesDoc)
	}
	subs := append([][2]string{
		{"listen 80;", "listen " + listen + ";"},
		{"server 127.0.0.1:5000;", "server " + upstream + ";"},
		{"proxy_read_timeout 300s;", "proxy_read_timeout " + readTimeout + ";"},
		{"proxy_send_timeout 300s;", "proxy_send_timeout " + readTimeout + ";"},
	}, extra...)
	for _, s := range subs {
		if n := strings.Count(block, s[0]); n != 1 {
			t.Fatalf("%s: the nginx block contains %q %d times, want once", proxiesDoc, s[0], n)
		}
		block = strings.Replace(block, s[0], s[1], 1)
	}
	user := ""
	if os.Geteuid() == 0 {
		// Workers would otherwise run as nobody, who cannot use the
		// test's private temporary directory.
		user = "user root;\n"
	}
	return user + `worker_processes 1;
events { worker_connections 256; }
http {
    access_log off;
` + block + "\n}\n"
}

// startNginx runs nginx in the foreground in front of upstream and returns
// its address. Cleanup stops it and waits for it, killing its process group
// if it does not stop.
func startNginx(t *testing.T, upstream, readTimeout string, extra ...[2]string) string {
	t.Helper()
	exe := findTool(t, "nginx", "nginx", "/usr/sbin/nginx")
	addr := freeLoopbackAddr(t)
	dir := t.TempDir()
	conf := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(conf, []byte(nginxConfig(t, addr, upstream, readTimeout, extra...)), 0o600); err != nil {
		t.Fatal(err)
	}
	var out lockedBuffer
	cmd := exec.Command(exe, "-e", "stderr", "-p", dir, "-c", conf,
		"-g", "daemon off; pid "+filepath.Join(dir, "nginx.pid")+"; error_log stderr warn;")
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // nginx and its worker, killable as a group
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }() // ends when nginx exits; cleanup receives
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM) // fast shutdown: master stops its worker
		select {
		case <-exited:
		case <-time.After(stepTimeout):
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-exited
			t.Errorf("nginx did not stop on SIGTERM; killed")
		}
		if t.Failed() {
			t.Logf("nginx output:\n%s", out.String())
		}
	})

	deadline := time.Now().Add(stepTimeout)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return addr
		}
		select {
		case err := <-exited:
			exited <- err
			t.Fatalf("nginx exited: %v\n%s", err, out.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("nginx is not listening on %s: %v\n%s", addr, err, out.String())
		}
		time.Sleep(20 * time.Millisecond) // polling a port, not synchronisation
	}
}

// freeLoopbackAddr returns a loopback address that was free a moment ago.
func freeLoopbackAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// proxied runs the example application behind nginx and returns the app
// and nginx's address.
func proxied(t *testing.T, cfg app.Config, readTimeout string, extra ...[2]string) (*app.App, string) {
	t.Helper()
	a, srv := serveApp(t, cfg)
	return a, startNginx(t, strings.TrimPrefix(srv.URL, "http://"), readTimeout, extra...)
}

func dialVia(t *testing.T, addr, path, origin string) (*websocket.Conn, *http.Response, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), stepTimeout)
	defer cancel()
	var h http.Header
	if origin != "" {
		h = http.Header{"Origin": {origin}}
	}
	c, resp, err := websocket.Dial(ctx, "ws://"+addr+path, &websocket.DialOptions{HTTPHeader: h})
	if c != nil {
		t.Cleanup(func() { _ = c.CloseNow() })
	}
	return c, resp, err
}

// reader reads c in a goroutine, which answers the server's pings, and
// delivers messages and the final error.
type reader struct {
	msgs chan string
	err  chan error
}

func startReader(c *websocket.Conn) *reader {
	r := &reader{msgs: make(chan string, 16), err: make(chan error, 1)}
	go func() { // ends when c is closed, by either side or by cleanup
		for {
			_, p, err := c.Read(context.Background())
			if err != nil {
				r.err <- err
				return
			}
			r.msgs <- string(p)
		}
	}()
	return r
}

// TestNginxKeepAliveOutlivesIdleTimeout: with proxy_read_timeout 3s and a
// 1 s keep-alive, a socket that carries no message for 7 s stays open
// through nginx and still echoes.
func TestNginxKeepAliveOutlivesIdleTimeout(t *testing.T) {
	a, addr := proxied(t, app.Config{KeepAliveInterval: time.Second, KeepAliveTimeout: 10 * time.Second}, "3s")
	c, _, err := dialVia(t, addr, "/ws", "")
	if err != nil {
		t.Fatal(err)
	}
	r := startReader(c)

	const idle = 7 * time.Second // well past proxy_read_timeout
	select {
	case err := <-r.err:
		t.Fatalf("socket closed while idle despite keep-alive: %v", err)
	case m := <-r.msgs:
		t.Fatalf("unexpected message %q", m)
	case <-time.After(idle):
	}

	ctx, cancel := context.WithTimeout(context.Background(), stepTimeout)
	defer cancel()
	if err := c.Write(ctx, websocket.MessageText, []byte("still here")); err != nil {
		t.Fatalf("write after %v idle: %v", idle, err)
	}
	select {
	case m := <-r.msgs:
		if m != "still here" {
			t.Errorf("echo = %q", m)
		}
	case err := <-r.err:
		t.Fatalf("read after %v idle: %v", idle, err)
	case <-ctx.Done():
		t.Fatal("no echo")
	}
	st := a.WS.Stats()
	t.Logf("pings sent during %v idle: %d, keep-alive timeouts: %d", idle, st.PingsSent, st.KeepAliveTimeouts)
	if st.PingsSent < 3 || st.KeepAliveTimeouts != 0 {
		t.Errorf("stats = %+v, want pings every second and no timeouts", st)
	}
	if err := c.Close(websocket.StatusNormalClosure, ""); err != nil {
		t.Errorf("close through nginx: %v", err)
	}
}

// TestNginxCutsIdleSocketWithoutKeepAlive is the other side of the rule:
// without keep-alive, nginx closes the idle socket after
// proxy_read_timeout, with no close frame (a browser would see 1006).
func TestNginxCutsIdleSocketWithoutKeepAlive(t *testing.T) {
	_, addr := proxied(t, app.Config{KeepAliveInterval: -1}, "3s")
	c, _, err := dialVia(t, addr, "/ws", "")
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	r := startReader(c)
	select {
	case err := <-r.err:
		t.Logf("idle socket cut by nginx after %v: %v", time.Since(start).Round(100*time.Millisecond), err)
		if code := websocket.CloseStatus(err); code != -1 {
			t.Errorf("got close frame %d, want a dropped connection", code)
		}
	case m := <-r.msgs:
		t.Fatalf("unexpected message %q", m)
	case <-time.After(stepTimeout):
		t.Fatal("nginx kept an idle socket without keep-alive open past proxy_read_timeout")
	}
}

// TestNginxOrigins checks that the origin policy still sees the browser's
// Origin, and the browser's Host, through the documented configuration.
func TestNginxOrigins(t *testing.T) {
	t.Run("AllowedOrigins", func(t *testing.T) {
		a, addr := proxied(t, app.Config{AllowedOrigins: []string{"https://app.example.com"}}, "3s")
		tests := []struct {
			origin string
			want   int
		}{
			{"https://app.example.com", http.StatusSwitchingProtocols},
			{"https://evil.example.com", http.StatusForbidden},
		}
		for _, tt := range tests {
			checkDial(t, addr, tt.origin, tt.want)
		}
		if got := a.WS.Stats().RejectedOrigin; got != 1 {
			t.Errorf("RejectedOrigin = %d, want 1", got)
		}
	})

	// The default same-origin policy compares Origin with Host: the
	// documented Host $http_host keeps nginx's port, so a page served by
	// nginx on a non-default port may connect and a foreign one may not.
	t.Run("same origin with Host $http_host", func(t *testing.T) {
		_, addr := proxied(t, app.Config{}, "3s")
		checkDial(t, addr, "http://"+addr, http.StatusSwitchingProtocols)
		checkDial(t, addr, "http://evil.example.com", http.StatusForbidden)
	})

	// The usual advice, Host $host, drops the port: on a non-default port
	// every same-origin browser is refused. This is why the guide uses
	// $http_host.
	t.Run("same origin with Host $host", func(t *testing.T) {
		_, addr := proxied(t, app.Config{}, "3s",
			[2]string{"proxy_set_header Host $http_host;", "proxy_set_header Host $host;"})
		checkDial(t, addr, "http://"+addr, http.StatusForbidden)
	})
}

func checkDial(t *testing.T, addr, origin string, want int) {
	t.Helper()
	c, resp, err := dialVia(t, addr, "/ws", origin)
	if resp == nil {
		t.Fatalf("Origin %s: dial: %v", origin, err)
	}
	if resp.StatusCode != want {
		t.Errorf("Origin %s: status %d, want %d (err %v)", origin, resp.StatusCode, want, err)
		return
	}
	if c == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), stepTimeout)
	defer cancel()
	msg := fmt.Sprintf("hello from %s", origin)
	if err := c.Write(ctx, websocket.MessageText, []byte(msg)); err != nil {
		t.Fatal(err)
	}
	if _, p, err := c.Read(ctx); err != nil || !bytes.Equal(p, []byte(msg)) {
		t.Errorf("echo through nginx = %q, %v", p, err)
	}
	if err := c.Close(websocket.StatusNormalClosure, ""); err != nil && !errors.Is(err, net.ErrClosed) {
		t.Errorf("close: %v", err)
	}
}

// TestNginxPlainGET: through the proxy, a plain GET of /ws is still 400
// and the page is served.
func TestNginxPlainGET(t *testing.T) {
	_, addr := proxied(t, app.Config{}, "3s")
	for path, want := range map[string]int{"/ws": http.StatusBadRequest, "/": http.StatusOK} {
		resp, err := http.Get("http://" + addr + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("GET %s via nginx = %d, want %d", path, resp.StatusCode, want)
		}
	}
}

// TestNginxBrowser loads the page through nginx in Chromium: the socket
// the page opens (to nginx's own host and port) passes the same-origin
// default, echoes, and closes with 1000, all through the documented proxy
// configuration.
func TestNginxBrowser(t *testing.T) {
	a, addr := proxied(t, app.Config{KeepAliveInterval: time.Second}, "3s")
	tb := newTab(t, newBrowser(t), "tab")
	tb.loadPage("http://" + addr + "/")
	if got, want := run(tb, "read url", chromedp.Value(chromedp.ID("url"))), "ws://"+addr+"/ws"; got != want {
		t.Errorf("pre-filled URL = %q, want %q", got, want)
	}
	tb.do("connect",
		chromedp.Click(chromedp.ID("connect")),
		chromedp.WaitVisible(chromedp.CSS(`#status[data-state="open"]`)),
	)
	tb.send("through nginx")
	tb.do("see the echo", chromedp.Poll[chromedp.Void](logHas("recv", "through nginx")))
	tb.do("close socket",
		chromedp.Click(chromedp.ID("close")),
		chromedp.WaitVisible(chromedp.CSS(`#log li[data-kind="close"][data-code="1000"]`)),
	)
	if st := a.WS.Stats(); st.Accepted != 1 || st.RejectedOrigin != 0 {
		t.Errorf("stats = %+v, want one accepted socket and no origin rejection", st)
	}
}
