package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chiws/chiws/example/app"
	"github.com/chromedp/chromedp"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

// Timeouts, generous for a loaded 2-core machine.
const (
	browserLifetime = 3 * time.Minute  // the whole browser, per test
	stepTimeout     = 45 * time.Second // one step of a test
)

// artifactsDir receives a screenshot of the page when a step fails.
const artifactsDir = "testdata/artifacts"

// lockedBuffer collects Chromium's output, shown when a test fails.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.b.Len() > 64<<10 {
		return len(p), nil
	}
	return b.b.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// newBrowser starts a headless Chromium with a fresh profile. The returned
// context is the browser's; cleanup stops Chromium and waits for it.
func newBrowser(t *testing.T, flags ...chromedp.ExecAllocatorOption) context.Context {
	t.Helper()
	exe := findTool(t, "chromium", "/usr/bin/chromium", "chromium", "chromium-browser")
	profile := t.TempDir() // registered first, so removed after Chromium exits
	out := &lockedBuffer{}
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(exe),
		chromedp.UserDataDir(profile),
		chromedp.NoSandbox, // the tests may run as root, where the sandbox refuses to start
		chromedp.DisableGPU,
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("no-first-run", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.WindowSize(1100, 900),
		chromedp.CombinedOutput(out),
	)
	opts = append(opts, flags...)
	parent, cancelParent := context.WithTimeout(context.Background(), browserLifetime)
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(parent, opts...)
	browserCtx, cancelBrowser := chromedp.NewContext(allocCtx)
	t.Cleanup(func() {
		cancelBrowser()
		cancelAlloc() // waits for the Chromium process to exit
		cancelParent()
		if t.Failed() {
			t.Logf("chromium output:\n%s", out.String())
		}
	})
	// The first Run starts the browser; its context must not have a
	// deadline shorter than the browser's life.
	if err := chromedp.Do(browserCtx); err != nil {
		t.Fatalf("start chromium %s: %v\n%s", exe, err, out.String())
	}
	return browserCtx
}

// tab is one browser tab in a test.
type tab struct {
	t    *testing.T
	name string
	ctx  context.Context
}

// newTab opens a tab in the browser.
func newTab(t *testing.T, browser context.Context, name string) *tab {
	t.Helper()
	ctx, cancel := chromedp.NewContext(browser)
	t.Cleanup(cancel)
	// The first Run creates the tab, which lives as long as that Run's
	// context: it must be ctx itself, without a step deadline.
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("%s: open tab: %v", name, err)
	}
	return &tab{t: t, name: name, ctx: ctx}
}

// run runs one step with a deadline. On failure it saves a screenshot of
// the tab and fails the test.
func run[T any](tb *tab, step string, a chromedp.Action[T]) T {
	tb.t.Helper()
	ctx, cancel := context.WithTimeout(tb.ctx, stepTimeout)
	defer cancel()
	v, err := chromedp.Run(ctx, a)
	if err != nil {
		tb.t.Fatalf("%s: %s: %v%s", tb.name, step, err, tb.screenshot(step))
	}
	return v
}

// do runs steps that return nothing; see run.
func (tb *tab) do(step string, steps ...chromedp.Action[chromedp.Void]) {
	tb.t.Helper()
	run(tb, step, chromedp.Steps(steps...))
}

var unsafeName = regexp.MustCompile(`[^A-Za-z0-9._-]+`)

// screenshot saves the tab as a PNG under testdata/artifacts and returns a
// message naming the file, or why there is none.
func (tb *tab) screenshot(step string) string {
	ctx, cancel := context.WithTimeout(tb.ctx, 15*time.Second)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		return fmt.Sprintf(" (no screenshot: %v)", err)
	}
	name := unsafeName.ReplaceAllString(tb.t.Name()+"-"+tb.name+"-"+step, "_") + ".png"
	path := filepath.Join(artifactsDir, name)
	if err := os.MkdirAll(artifactsDir, 0o755); err != nil {
		return fmt.Sprintf(" (no screenshot: %v)", err)
	}
	if err := os.WriteFile(path, png, 0o644); err != nil {
		return fmt.Sprintf(" (no screenshot: %v)", err)
	}
	abs, _ := filepath.Abs(path)
	return "\nscreenshot: " + abs
}

// serveApp runs the example application's handler on a loopback port.
func serveApp(t *testing.T, cfg app.Config) (*app.App, *httptest.Server) {
	t.Helper()
	a, err := app.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(a.Handler)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), stepTimeout)
		defer cancel()
		if err := a.Shutdown(ctx); err != nil {
			t.Errorf("app shutdown: %v", err)
		}
		srv.Close()
	})
	return a, srv
}

func wsURL(srv *httptest.Server, path string) string {
	return "ws" + strings.TrimPrefix(srv.URL, "http") + path
}

// jsString quotes s for a JavaScript expression.
func jsString(s string) string { return fmt.Sprintf("%q", s) }

// logHas is a predicate for the Communication Log: an entry of kind whose
// text contains text.
func logHas(kind, text string) string {
	return fmt.Sprintf(`Array.from(document.querySelectorAll('#log li[data-kind=%s] .text')).some(e => e.textContent.includes(%s))`,
		jsString(kind), jsString(text))
}

// logKinds returns the kinds of the log entries, in order.
func logKinds(tb *tab) []string {
	tb.t.Helper()
	return run(tb, "read log", chromedp.Evaluate[[]string](
		`Array.from(document.querySelectorAll('#log li')).map(e => e.dataset.kind)`))
}

// loadPage opens url and waits until the page's script has run.
func (tb *tab) loadPage(url string) {
	tb.t.Helper()
	tb.do("load "+url,
		chromedp.Navigate(url),
		chromedp.WaitVisible(chromedp.CSS(`body[data-ready="true"]`)),
	)
}

// connect fills the URL field, clicks Connect and waits for the state.
func (tb *tab) connect(url, wantState string) {
	tb.t.Helper()
	tb.do("connect to "+url,
		chromedp.SetValue(chromedp.ID("url"), url),
		chromedp.Click(chromedp.ID("connect")),
		chromedp.WaitVisible(chromedp.CSS(`#status[data-state=`+jsString(wantState)+`]`)),
	)
}

// send types text into the message box and clicks Send.
func (tb *tab) send(text string) {
	tb.t.Helper()
	tb.do("send "+text,
		chromedp.WaitEnabled(chromedp.ID("send")),
		chromedp.SetValue(chromedp.ID("message"), text),
		chromedp.Click(chromedp.ID("send")),
		chromedp.Poll[chromedp.Void](logHas("send", text)),
	)
}

// TestEchoPage is the reference sample's walk-through in a real browser:
// load the page, Connect, Send, see the echo, Close Socket, see 1000.
func TestEchoPage(t *testing.T) {
	a, srv := serveApp(t, app.Config{})
	tb := newTab(t, newBrowser(t), "tab")
	tb.loadPage(srv.URL)

	// The URL field is pre-filled from the page's own host.
	if got, want := run(tb, "read url", chromedp.Value(chromedp.ID("url"))), wsURL(srv, "/ws"); got != want {
		t.Errorf("pre-filled URL = %q, want %q", got, want)
	}
	// Before connecting only Connect makes sense.
	disabled := run(tb, "read buttons", chromedp.Evaluate[map[string]bool](
		`Object.fromEntries(['connect','send','close','message'].map(id => [id, document.getElementById(id).disabled]))`))
	if want := map[string]bool{"connect": false, "send": true, "close": true, "message": true}; fmt.Sprint(disabled) != fmt.Sprint(want) {
		t.Errorf("disabled before connect = %v, want %v", disabled, want)
	}

	tb.do("connect",
		chromedp.Click(chromedp.ID("connect")),
		chromedp.WaitVisible(chromedp.CSS(`#status[data-state="open"]`)),
		chromedp.WaitVisible(chromedp.CSS(`#log li[data-kind="open"]`)),
		chromedp.WaitEnabled(chromedp.ID("close")),
	)
	if !run(tb, "connect disabled", chromedp.Evaluate[bool](`document.getElementById('connect').disabled`)) {
		t.Error("Connect is enabled while the socket is open")
	}

	const text = "Hello from Chromium, ünïcödé ✓"
	tb.send(text)
	tb.do("see the echo", chromedp.Poll[chromedp.Void](logHas("recv", text)))

	tb.do("close socket",
		chromedp.Click(chromedp.ID("close")),
		chromedp.WaitVisible(chromedp.CSS(`#log li[data-kind="close"][data-code="1000"]`)),
		chromedp.WaitVisible(chromedp.CSS(`#status[data-state="closed"]`)),
		chromedp.WaitEnabled(chromedp.ID("connect")),
	)
	if got, want := strings.Join(logKinds(tb), ","), "open,send,recv,close"; got != want {
		t.Errorf("log = %s, want %s", got, want)
	}
	status := run(tb, "read status", chromedp.Text(chromedp.ID("status")))
	if !strings.Contains(status, "1000") {
		t.Errorf("status = %q, want the close code 1000", status)
	}
	if st := a.WS.Stats(); st.Accepted != 1 || st.RejectedOrigin != 0 {
		t.Errorf("stats = %+v, want one accepted socket", st)
	}
}

// TestEchoPageHTTP2: the page and /ws from one TLS HTTP/2 server started
// with GODEBUG=http2xconnect=1 (TestMain): Chromium opens the socket as an
// extended CONNECT on the page's connection, and the echo and the close
// work as over HTTP/1.1.
func TestEchoPageHTTP2(t *testing.T) {
	core, logs := observer.New(zap.DebugLevel)
	a, err := app.New(app.Config{Logger: zap.New(core)})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(a.Handler)
	srv.EnableHTTP2 = true
	srv.StartTLS()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), stepTimeout)
		defer cancel()
		drained := make(chan error, 1)
		srv.Config.RegisterOnShutdown(func() { drained <- a.Shutdown(ctx) })
		if err := errors.Join(srv.Config.Shutdown(ctx), <-drained); err != nil {
			t.Errorf("shutdown: %v", err)
		}
		srv.Close()
	})
	// The test server's certificate is self-signed.
	tb := newTab(t, newBrowser(t, chromedp.Flag("ignore-certificate-errors", true)), "tab")
	tb.loadPage(srv.URL)
	if got, want := run(tb, "read url", chromedp.Value(chromedp.ID("url"))), wsURL(srv, "/ws"); got != want {
		t.Errorf("pre-filled URL = %q, want %q", got, want)
	}
	tb.connect(wsURL(srv, "/ws"), "open")
	const text = "hello over HTTP/2"
	tb.send(text)
	tb.do("see the echo", chromedp.Poll[chromedp.Void](logHas("recv", text)))
	tb.do("close socket",
		chromedp.Click(chromedp.ID("close")),
		chromedp.WaitVisible(chromedp.CSS(`#log li[data-kind="close"][data-code="1000"]`)),
	)
	accepted := logs.FilterMessage("websocket accepted").All()
	if len(accepted) != 1 || accepted[0].ContextMap()["proto"] != "HTTP/2.0" {
		t.Fatalf("accepted logs %v, want one over HTTP/2.0", accepted)
	}
	waitClosed := time.Now().Add(stepTimeout)
	for logs.FilterMessage("websocket closed").Len() == 0 {
		if time.Now().After(waitClosed) {
			t.Fatal("no close log")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if f := logs.FilterMessage("websocket closed").All()[0].ContextMap(); f["closeCode"] != int64(1000) || f["closedBy"] != "client" {
		t.Errorf("close log %v", f)
	}
}

// TestCrossOrigin loads the page from a second loopback server (another
// port, so another origin) and connects to the application: the default
// same-origin policy refuses it with 403, which the browser reports as an
// error and a 1006 close; listed in AllowedOrigins, the same page connects.
func TestCrossOrigin(t *testing.T) {
	foreign := httptest.NewServer(app.Page())
	t.Cleanup(foreign.Close)
	strict, strictSrv := serveApp(t, app.Config{})
	open, openSrv := serveApp(t, app.Config{AllowedOrigins: []string{foreign.URL}})

	browser := newBrowser(t)
	tb := newTab(t, browser, "foreign")
	tb.loadPage(foreign.URL)

	tb.connect(wsURL(strictSrv, "/ws"), "closed")
	tb.do("see the refusal",
		chromedp.WaitVisible(chromedp.CSS(`#log li[data-kind="error"]`)),
		chromedp.WaitVisible(chromedp.CSS(`#log li[data-kind="close"][data-code="1006"]`)),
	)
	if got, want := strings.Join(logKinds(tb), ","), "error,close"; got != want {
		t.Errorf("log = %s, want %s", got, want)
	}
	if st := strict.WS.Stats(); st.RejectedOrigin != 1 || st.Accepted != 0 {
		t.Errorf("same-origin app stats = %+v, want one origin rejection (403)", st)
	}

	tb.connect(wsURL(openSrv, "/ws"), "open")
	tb.send("cross-origin hello")
	tb.do("see the echo", chromedp.Poll[chromedp.Void](logHas("recv", "cross-origin hello")))
	if st := open.WS.Stats(); st.Accepted != 1 || st.RejectedOrigin != 0 {
		t.Errorf("allowing app stats = %+v, want one accepted socket", st)
	}
}

// TestBroadcastTabs joins /broadcast from two tabs: a message sent in one
// reaches the other.
func TestBroadcastTabs(t *testing.T) {
	a, srv := serveApp(t, app.Config{})
	browser := newBrowser(t)
	alice := newTab(t, browser, "alice")
	bob := newTab(t, browser, "bob")
	for _, tb := range []*tab{alice, bob} {
		tb.loadPage(srv.URL)
		tb.do("choose /broadcast", chromedp.Click(chromedp.CSS(`.presets button[data-path="/broadcast"]`)))
		if got, want := run(tb, "read url", chromedp.Value(chromedp.ID("url"))), wsURL(srv, "/broadcast"); got != want {
			t.Errorf("%s: URL after preset = %q, want %q", tb.name, got, want)
		}
		tb.connect(wsURL(srv, "/broadcast"), "open")
	}
	waitHub(t, a, 2)

	for _, tb := range []*tab{alice, bob} {
		tb.do("receive the welcome", chromedp.Poll[chromedp.Void](logHas("recv", app.Welcome)))
	}
	alice.send("hello from alice")
	bob.do("receive alice's message", chromedp.Poll[chromedp.Void](logHas("recv", "hello from alice")))
	bob.send("hi alice")
	alice.do("receive bob's message", chromedp.Poll[chromedp.Void](logHas("recv", "hi alice")))
	// Bob's message came after alice's own would have: she never got it.
	if run(alice, "look for her own message", chromedp.Evaluate[bool](logHas("recv", "hello from alice"))) {
		t.Error("alice received her own message: the room publishes to the others only")
	}

	bob.do("close bob",
		chromedp.Click(chromedp.ID("close")),
		chromedp.WaitVisible(chromedp.CSS(`#log li[data-kind="close"][data-code="1000"]`)),
	)
	waitHub(t, a, 1)
}

// waitHub polls the hub's member count.
func waitHub(t *testing.T, a *app.App, n int) {
	t.Helper()
	deadline := time.Now().Add(stepTimeout)
	for a.Hub.Len(app.Room) != n {
		if time.Now().After(deadline) {
			t.Fatalf("hub has %d members, want %d", a.Hub.Len(app.Room), n)
		}
		time.Sleep(10 * time.Millisecond) // polling a counter, not synchronisation
	}
}
