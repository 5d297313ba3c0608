// Package endmatrix is the specification of how a chiws socket ends, as a
// table test: one row per way a socket can end, each with what every
// witness of the end must say (the Context's cause and its close code, the
// close code on the wire, the close log, the Stats counters, and when Done
// fires). Run runs the table over one transport; the root package runs it
// over HTTP/1.1, http2test over HTTP/2, and docs/lifecycle.md's end table
// is rendered from it (Markdown).
//
// Every row runs a real server (httptest, chi, the middleware) and a real
// client (coder/websocket's Dial). Rows synchronise with channels and
// deadlines, never with sleeps.
package endmatrix

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chiws/chiws"
	"github.com/chiws/chiws/internal/wstest"
	"github.com/coder/websocket"
	"github.com/go-chi/chi/v5"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

// Wire codes that are not close codes.
const (
	// None: the client's reads ended without a close frame (1006 to a
	// browser).
	None websocket.StatusCode = -1
	// Gone: the client vanished (FIN, reset, black hole) and reads nothing.
	Gone websocket.StatusCode = 0
)

// Client is the client of a row: a coder/websocket client, and handles on
// what carries it.
type Client struct {
	WS *websocket.Conn

	// Raw writes bytes under the WebSocket client, for frames it refuses
	// to write (an unmasked frame): onto the TCP connection over HTTP/1.1,
	// into the stream over HTTP/2. Each Write must be whole frames, made
	// while the client writes nothing.
	Raw io.Writer

	// Fin closes the client's TCP connection without a close frame: the
	// server reads EOF (over HTTP/2, on the connection that carries the
	// stream).
	Fin func() error

	// Reset aborts the socket: a TCP reset over HTTP/1.1 (SetLinger(0)),
	// an RST_STREAM over HTTP/2.
	Reset func() error

	// Tap sees what the client reads from the server (TapConn, TapStream).
	Tap *Tap
}

// Dialer opens a row's client: a WebSocket to url (ws://host:port/ws,
// the server's, or a proxy's in front of it), over one transport, with
// the handles of Client. It registers the client's cleanup with t.
type Dialer func(ctx context.Context, t *testing.T, url string) (*Client, error)

// Outcome is one way the end of a row may be witnessed; a race has one per
// winner. The cells must agree with each other (see Check).
type Outcome struct {
	Cause error                // the sentinel context.Cause(c.Context()) matches
	Code  websocket.StatusCode // websocket.CloseStatus(cause): None when no close frame went out
	Wire  websocket.StatusCode // the close code the client read: None, or Gone

	// By is the cause given to Conn.CloseWith (nil: none): the cause
	// matches it too, and the close log gives its text in a cause field,
	// which it has only then.
	By error

	ClosedBy string // the close log's closedBy
	LogCode  int    // the close log's closeCode: 1006 when no close frame went out

	EarlyReturns, Panics, KeepAliveTimeouts uint64 // Stats

	// Crossed: both ends closed at once, and coder/websocket echoed the
	// peer's close frame before the server's own went out, so the wire
	// carries the peer's code while the cause is the server's decision.
	// chiws cannot see which frame coder/websocket wrote (docs/design.md,
	// "The end of a socket"); only racing rows allow it.
	Crossed bool
}

// Bound is how long after the client's action Done may fire.
type Bound int

const (
	// Prompt: a round trip on loopback. Rows that expect it keep the
	// default CloseTimeout (5 s), so that a close that waited for the
	// timeout fails the bound.
	Prompt Bound = iota
	// AfterCloseTimeout: Options.CloseTimeout (small in those rows).
	AfterCloseTimeout
	// AfterKeepAlive: Options.KeepAliveInterval + KeepAliveTimeout.
	AfterKeepAlive
	// AfterShutdownDeadline: ShutdownDeadline, the deadline of the context
	// Env.ShutdownExpiring gives Shutdown.
	AfterShutdownDeadline
)

// ShutdownDeadline is the deadline of the context Env.ShutdownExpiring
// gives Shutdown: well under the default CloseTimeout (5 s), so that a
// row bounded by it shows that the context, not CloseTimeout, ended the
// socket.
const ShutdownDeadline = 300 * time.Millisecond

// slack is what a bound allows for scheduling: the machine may be loaded
// and the race detector on.
const slack = time.Second

// Done is when a row's Done fires.
type Done struct {
	// Call names the handler's own call that sees the end ("c.Read"), or
	// calls, separated by " or ": Done is closed when it returns. Empty
	// when no call of the handler sees the end.
	Call string
	// Within bounds the time from the client's action to Done.
	Within Bound
}

// Row is one way a socket ends.
type Row struct {
	Name    string        // the way it ends
	Options chiws.Options // Logger is set by Run

	// Handler runs in the route once the socket is accepted, and ends the
	// request when it returns (or panics).
	Handler func(e *Env, c *chiws.Conn)

	// Client is the client's action, once the socket is accepted. Unless
	// the client vanishes (Outcome.Wire is Gone), it reads until its
	// socket ends, so that the Tap has seen everything.
	Client func(e *Env, cl *Client)

	// Proxy: the client dials through a wstest.Proxy (Env.Proxy).
	Proxy bool

	// RePanic is the value the middleware panics with again (nil: none).
	RePanic any

	Want []Outcome // one, or one per winner of a race
	Done Done
}

// Env is what a row's handler and client share: the test, the middleware,
// named signals, and the record of the handler's calls.
type Env struct {
	T         *testing.T
	Transport string
	MW        *chiws.Middleware
	Ctx       context.Context // ends at the row's deadline
	Proxy     *wstest.Proxy   // for rows with Proxy

	mu       sync.Mutex
	signals  map[string]chan struct{}
	conn     *chiws.Conn
	ended    string // the handler's first call that saw the end
	doneThen bool   // whether Done was closed when it returned
	wg       sync.WaitGroup
}

// rowTimeout bounds every wait of a row: a row that hangs fails.
const rowTimeout = 10 * time.Second

func (e *Env) signal(name string) chan struct{} {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.signals == nil {
		e.signals = make(map[string]chan struct{})
	}
	ch, ok := e.signals[name]
	if !ok {
		ch = make(chan struct{})
		e.signals[name] = ch
	}
	return ch
}

// Signal raises the signal name, once.
func (e *Env) Signal(name string) {
	ch := e.signal(name)
	e.mu.Lock()
	defer e.mu.Unlock()
	select {
	case <-ch:
	default:
		close(ch)
	}
}

// Await waits for the signal name, and reports false (failing the test)
// when the row's deadline passes first. It may be called from any
// goroutine.
func (e *Env) Await(name string) bool {
	select {
	case <-e.signal(name):
		return true
	case <-e.Ctx.Done():
		e.T.Errorf("timed out waiting for %q", name)
		return false
	}
}

// AwaitEnd waits until the server's socket has ended (its Done).
func (e *Env) AwaitEnd() {
	select {
	case <-e.conn.Done():
	case <-e.Ctx.Done():
		e.T.Errorf("timed out waiting for the socket to end")
	}
}

// Go runs f in a goroutine that the row waits for before it checks
// anything: a handler's background goroutine, or a client's.
func (e *Env) Go(f func()) {
	e.wg.Add(1)
	go func() { // owned by the row, which waits for e.wg
		defer e.wg.Done()
		f()
	}()
}

// Shutdown runs Middleware.Shutdown in a goroutine of the row; it must
// return nil.
func (e *Env) Shutdown() {
	e.Go(func() {
		if err := e.MW.Shutdown(e.Ctx); err != nil {
			e.T.Errorf("Shutdown: %v", err)
		}
	})
}

// ShutdownExpiring runs Middleware.Shutdown in a goroutine of the row,
// with a context that ends ShutdownDeadline later; it must return
// context.DeadlineExceeded.
func (e *Env) ShutdownExpiring() {
	e.Go(func() {
		ctx, cancel := context.WithTimeout(e.Ctx, ShutdownDeadline)
		defer cancel()
		if err := e.MW.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
			e.T.Errorf("Shutdown = %v, want context.DeadlineExceeded", err)
		}
	})
}

// Ended records that the handler's call returned having seen the end of
// the socket, and whether Done was closed then. Call it right after the
// call returns.
func (e *Env) Ended(call string) {
	closed := false
	select {
	case <-e.conn.Done():
		closed = true
	default:
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.ended == "" {
		e.ended, e.doneThen = call, closed
	}
}

// Saw reports whether err is non-nil, and records it as the call that saw
// the end (Ended) when it is: a handler loop is `if e.Saw("c.Read", err) {
// return }`.
func (e *Env) Saw(call string, err error) bool {
	if err != nil {
		e.Ended(call)
	}
	return err != nil
}

// Sentinels are the causes of an end, and their closedBy names.
var Sentinels = []struct {
	Err      error
	ClosedBy string
}{
	{chiws.ErrClosedByPeer, "client"},
	{chiws.ErrClosedByServer, "server"},
	{chiws.ErrKeepAliveTimeout, "keepalive"},
	{chiws.ErrShuttingDown, "shutdown"},
	{chiws.ErrHandlerReturned, "handler-return"},
	{chiws.ErrHandlerPanicked, "panic"},
	{chiws.ErrConnectionLost, "connection-lost"},
}

// Check reports what makes o disagree with itself: the close log must name
// the cause and its code, the wire must carry the cause's code, and each
// counter counts its own cause. Run checks every observed end with it, so
// that the winner of a race, whichever it is, is witnessed consistently.
func Check(o Outcome) []string {
	var errs []string
	name := ""
	n := 0
	for _, s := range Sentinels {
		if errors.Is(o.Cause, s.Err) {
			name = s.ClosedBy
			n++
		}
	}
	if n != 1 {
		errs = append(errs, fmt.Sprintf("the cause %v matches %d sentinels, want exactly 1", o.Cause, n))
	}
	if o.ClosedBy != name {
		errs = append(errs, fmt.Sprintf("closedBy %q for the cause %v (%q)", o.ClosedBy, o.Cause, name))
	}
	if want := logCode(o.Code); o.LogCode != want {
		errs = append(errs, fmt.Sprintf("closeCode %d in the log, %d in the cause", o.LogCode, want))
	}
	if o.Wire != Gone && o.Wire != o.Code && !o.Crossed {
		errs = append(errs, fmt.Sprintf("the wire carried %s, the cause says %s", wireName(o.Wire), wireName(o.Code)))
	}
	is := func(err error) uint64 {
		if errors.Is(o.Cause, err) {
			return 1
		}
		return 0
	}
	if o.EarlyReturns != is(chiws.ErrHandlerReturned) {
		errs = append(errs, fmt.Sprintf("EarlyReturns %d for the cause %v", o.EarlyReturns, o.Cause))
	}
	if o.KeepAliveTimeouts != is(chiws.ErrKeepAliveTimeout) {
		errs = append(errs, fmt.Sprintf("KeepAliveTimeouts %d for the cause %v", o.KeepAliveTimeouts, o.Cause))
	}
	// A panic is counted unless it is http.ErrAbortHandler, which aborts.
	if o.Panics != is(chiws.ErrHandlerPanicked) && !(o.Panics == 0 && o.Code == None) {
		errs = append(errs, fmt.Sprintf("Panics %d for the cause %v, code %d", o.Panics, o.Cause, o.Code))
	}
	return errs
}

func logCode(c websocket.StatusCode) int {
	if c == None {
		return int(websocket.StatusAbnormalClosure)
	}
	return int(c)
}

func wireName(c websocket.StatusCode) string {
	switch c {
	case None:
		return "no close frame"
	case Gone:
		return "nothing (the client is gone)"
	}
	return fmt.Sprint(int(c))
}

// Run runs every row of Rows over the transport that dial dials.
func Run(t *testing.T, transport string, dial Dialer) {
	for _, tt := range Rows {
		for _, o := range tt.Want {
			if errs := Check(o); len(errs) > 0 {
				t.Fatalf("row %q contradicts itself: %s", tt.Name, strings.Join(errs, "; "))
			}
		}
		t.Run(tt.Name, func(t *testing.T) { run(t, transport, dial, tt) })
	}
}

// doneInfo is what the socket's Done saw when it fired.
type doneInfo struct {
	at     time.Time
	active int // Stats().Active then
}

func run(t *testing.T, transport string, dial Dialer, tt Row) {
	ctx, cancel := context.WithTimeout(context.Background(), rowTimeout)
	defer cancel()
	core, logs := observer.New(zap.DebugLevel)
	opts := tt.Options
	opts.Logger = zap.New(core)
	mw := chiws.New(opts)
	e := &Env{T: t, Transport: transport, MW: mw, Ctx: ctx}
	// Last: a row that failed early leaves goroutines that end once the
	// sockets are closed (by the cleanup's Shutdown) or ctx is done, and
	// they may still report.
	t.Cleanup(e.wg.Wait)

	accepted := make(chan *chiws.Conn, 1)
	served := make(chan any, 1) // what the request ended with: nil, or a panic
	done := make(chan doneInfo, 1)
	r := chi.NewRouter()
	r.Use(func(next http.Handler) http.Handler {
		// Above the middleware: sees a panic it lets through.
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			defer func() {
				p := recover()
				served <- p
				if p != nil {
					panic(p) // on to net/http, as without this wrapper
				}
			}()
			next.ServeHTTP(w, r)
		})
	}, mw.Handler)
	r.Get("/ws", func(w http.ResponseWriter, r *http.Request) {
		c, err := chiws.Accept(w, r, nil)
		if err != nil {
			t.Errorf("Accept: %v", err)
			return
		}
		e.conn = c // before the send: the test reads it after the receive
		context.AfterFunc(c.Context(), func() { done <- doneInfo{time.Now(), mw.Stats().Active} })
		accepted <- c
		tt.Handler(e, c)
	})

	srv := httptest.NewUnstartedServer(r)
	srv.Config.Protocols = new(http.Protocols)
	srv.Config.Protocols.SetHTTP1(true)
	srv.Config.Protocols.SetUnencryptedHTTP2(true)
	errLog := &wstest.SyncBuffer{}
	srv.Config.ErrorLog = log.New(errLog, "", 0)
	srv.Start()
	t.Cleanup(func() { // runs after the client's and the proxy's cleanups
		ctx, cancel := context.WithTimeout(context.Background(), rowTimeout)
		defer cancel()
		if err := mw.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown at cleanup: %v", err)
		}
		srv.Close()
		if s := errLog.String(); strings.Contains(s, "panic") {
			t.Errorf("net/http logged a panic:\n%s", s)
		}
	})
	addr := srv.Listener.Addr().String()
	if tt.Proxy {
		p, err := wstest.NewProxy(addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { p.Close() })
		e.Proxy, addr = p, p.Addr()
	}

	cl, err := dial(ctx, t, "ws://"+addr+"/ws")
	if err != nil {
		select {
		case c := <-accepted: // the server has a socket the client never saw open
			t.Fatalf("dial over %s: %v; yet Accept returned the socket, which ended with %v",
				transport, err, context.Cause(c.Context()))
		default:
			t.Fatalf("dial over %s: %v", transport, err)
		}
	}
	var c *chiws.Conn
	select {
	case c = <-accepted:
	case <-ctx.Done():
		t.Fatal("the route never accepted the socket")
	}

	start := time.Now()
	tt.Client(e, cl)
	var d doneInfo
	select {
	case d = <-done:
	case <-ctx.Done():
		t.Fatalf("Done never fired (cause so far: %v)", context.Cause(c.Context()))
	}
	var p any
	select {
	case p = <-served:
	case <-ctx.Done():
		t.Fatal("the handler never returned")
	}
	waited := make(chan struct{})
	go func() { // ends with the row's goroutines, which the last cleanup waits for
		e.wg.Wait()
		close(waited)
	}()
	select {
	case <-waited:
	case <-ctx.Done():
		// Stuck on an open socket: the cleanup's Shutdown ends it.
		t.Fatal("the row's goroutines never returned")
	}

	// What every witness says.
	cause := context.Cause(c.Context())
	st := mw.Stats()
	got := Outcome{
		Cause:             cause,
		Code:              websocket.CloseStatus(cause),
		Wire:              cl.Tap.Code(),
		EarlyReturns:      st.EarlyReturns,
		Panics:            st.Panics,
		KeepAliveTimeouts: st.KeepAliveTimeouts,
		LogCode:           -1,
	}
	logCause, logged := "", false
	entries := logs.FilterMessage("websocket closed").All()
	if len(entries) != 1 {
		t.Errorf("%d close logs, want 1", len(entries))
	} else {
		f := entries[0].ContextMap()
		got.ClosedBy, _ = f["closedBy"].(string)
		if code, ok := f["closeCode"].(int64); ok {
			got.LogCode = int(code)
		}
		logCause, logged = f["cause"].(string)
	}
	want := match(tt.Want, got)
	got.By = closeWithCause(cause, logCause, logged, want.By)
	if want.Wire == Gone {
		got.Wire = Gone // the client vanished: it reads nothing
	}
	got.Crossed = want.Crossed && got.Wire == want.Wire
	t.Logf("%s: cause %v; wire %s; closedBy %q %d; %v after the client's action", transport,
		cause, wireName(got.Wire), got.ClosedBy, got.LogCode, d.at.Sub(start).Round(time.Millisecond))
	for _, err := range Check(got) {
		t.Errorf("the witnesses disagree: %s", err)
	}
	if !same(got, want) {
		t.Errorf("got  %s\nwant %s", got, outcomes(tt.Want))
	}
	if d.active != 0 {
		t.Errorf("Stats().Active = %d when Done fired, want 0", d.active)
	}
	if st.Active != 0 {
		t.Errorf("Stats().Active = %d after the end", st.Active)
	}

	// When Done fired.
	e.mu.Lock()
	ended, doneThen := e.ended, e.doneThen
	e.mu.Unlock()
	if tt.Done.Call != "" {
		switch {
		case ended == "":
			t.Errorf("no call of the handler saw the end, want %s", tt.Done.Call)
		case !oneOf(ended, tt.Done.Call):
			t.Errorf("%s saw the end, want %s", ended, tt.Done.Call)
		case !doneThen:
			t.Errorf("Done was not closed yet when the handler's %s returned", ended)
		}
	}
	if took, max := d.at.Sub(start), tt.bound(); took > max {
		t.Errorf("Done fired %v after the client's action, want within %v", took, max)
	}
	if p != tt.RePanic {
		t.Errorf("the middleware let through the panic %v, want %v", p, tt.RePanic)
	}
}

// match returns the outcome of want that got's cause and code select (a
// race has one per winner), or the first.
func match(want []Outcome, got Outcome) Outcome {
	var found []Outcome
	for _, o := range want {
		if errors.Is(got.Cause, o.Cause) && got.Code == o.Code {
			found = append(found, o)
		}
	}
	for _, o := range found {
		if o.Wire == got.Wire || o.Wire == Gone {
			return o
		}
	}
	return append(found, want[0])[0]
}

// closeWithCause returns what witnesses CloseWith's cause: want, when
// the cause matches it and the close log gives its text; else an error
// that says what the log gives (logCause, when logged), or nil when
// there is neither a cause field nor a cause wanted.
func closeWithCause(cause error, logCause string, logged bool, want error) error {
	switch {
	case want != nil && errors.Is(cause, want) && logged && logCause == want.Error():
		return want
	case logged:
		return fmt.Errorf("a cause the close log gives as %q", logCause)
	case want != nil:
		return errors.New("a cause the close log does not give")
	}
	return nil
}

// same reports whether got is the outcome want: the same sentinel, and
// the same cells.
func same(got, want Outcome) bool {
	if !errors.Is(got.Cause, want.Cause) {
		return false
	}
	got.Cause = want.Cause
	return got == want
}

// bound returns how long after the client's action Done may fire.
func (tt *Row) bound() time.Duration {
	switch tt.Done.Within {
	case AfterCloseTimeout:
		return tt.Options.CloseTimeout + slack
	case AfterKeepAlive:
		return tt.Options.KeepAliveInterval + tt.Options.KeepAliveTimeout + slack
	case AfterShutdownDeadline:
		return ShutdownDeadline + slack
	}
	return slack
}

func oneOf(call, calls string) bool {
	for _, c := range strings.Split(calls, " or ") {
		if c == call {
			return true
		}
	}
	return false
}

func (o Outcome) String() string {
	by := "<nil>"
	for _, s := range Sentinels {
		if errors.Is(o.Cause, s.Err) {
			by = sentinelName(s.Err)
		}
	}
	if o.By != nil {
		by += fmt.Sprintf(" (CloseWith's %v)", o.By)
	}
	return fmt.Sprintf("{%s %s; wire %s; log %q %d; EarlyReturns %d Panics %d KeepAliveTimeouts %d}",
		by, wireName(o.Code), wireName(o.Wire), o.ClosedBy, o.LogCode, o.EarlyReturns, o.Panics, o.KeepAliveTimeouts)
}

func outcomes(os []Outcome) string {
	s := make([]string, len(os))
	for i, o := range os {
		s[i] = o.String()
	}
	return strings.Join(s, "\n  or ")
}
