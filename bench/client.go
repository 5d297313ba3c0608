package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
)

// Client drives a benchmark server over loopback with coder/websocket's
// client, the same for every candidate. Connections are spread over
// Sources local addresses (127.0.0.2, 127.0.0.3, ...) so that tens of
// thousands of sockets and the TIME_WAIT of fast churn do not exhaust the
// ephemeral ports of one source address.
type Client struct {
	Addr    string // host:port of the WebSocket server, on 127.0.0.1
	CtlAddr string // host:port of its PathStats listener
	// CPUProfile, if set, is a file that RunIdle writes the server's CPU
	// profile over its measurement window to (net/http/pprof on the
	// control listener, instead of sleeping through the window).
	CPUProfile string
	clients    []*http.Client
	ctl        *http.Client
	tcpDials   atomic.Int64 // TCP connections dialled to Addr
}

// NewClient returns a client of the server at addr, whose control
// endpoint is at ctlAddr, using sources local addresses (minimum 1).
func NewClient(addr, ctlAddr string, sources int) *Client {
	c := &Client{Addr: addr, CtlAddr: ctlAddr, ctl: &http.Client{Timeout: 30 * time.Second}}
	for i := range max(sources, 1) {
		d := &net.Dialer{
			Timeout:   10 * time.Second,
			LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(2+i))},
		}
		dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
			c.tcpDials.Add(1)
			return d.DialContext(ctx, network, addr)
		}
		c.clients = append(c.clients, &http.Client{Transport: &http.Transport{DialContext: dial}})
	}
	return c
}

// Close releases idle control connections.
func (c *Client) Close() {
	c.ctl.CloseIdleConnections()
	for _, h := range c.clients {
		h.CloseIdleConnections()
	}
}

// Dial opens the i-th socket to path.
func (c *Client) Dial(ctx context.Context, i int, path string) (*websocket.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	ws, _, err := websocket.Dial(ctx, "ws://"+c.Addr+path, &websocket.DialOptions{
		HTTPClient: c.clients[i%len(c.clients)],
	})
	if err != nil {
		return nil, err
	}
	ws.SetReadLimit(1 << 20)
	return ws, nil
}

// Stats fetches the server's ServerStats.
func (c *Client) Stats(gc bool) (ServerStats, error) {
	u := "http://" + c.CtlAddr + PathStats
	if gc {
		u += "?gc=1"
	}
	var st ServerStats
	res, err := c.ctl.Get(u)
	if err != nil {
		return st, err
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		return st, fmt.Errorf("stats: %s", res.Status)
	}
	return st, json.NewDecoder(res.Body).Decode(&st)
}

// waitActive polls the server until it reports n open sockets.
func (c *Client) waitActive(n int64, timeout time.Duration) (ServerStats, error) {
	deadline := time.Now().Add(timeout)
	for {
		st, err := c.Stats(false)
		if err != nil {
			return st, err
		}
		if st.Active == n {
			return st, nil
		}
		if time.Now().After(deadline) {
			return st, fmt.Errorf("server has %d open sockets after %v, want %d", st.Active, timeout, n)
		}
		time.Sleep(50 * time.Millisecond) // polling a counter with a deadline
	}
}

// Latencies summarises samples in microseconds.
type Latencies struct {
	P50  float64 `json:"p50us"`
	P99  float64 `json:"p99us"`
	P999 float64 `json:"p999us"`
}

func summarise(samples []time.Duration) Latencies {
	if len(samples) == 0 {
		return Latencies{}
	}
	slices.Sort(samples)
	q := func(p float64) float64 {
		i := min(int(p*float64(len(samples))), len(samples)-1)
		return float64(samples[i]) / 1e3
	}
	return Latencies{P50: q(0.50), P99: q(0.99), P999: q(0.999)}
}

// ConnectResult is the outcome of RunConnect.
type ConnectResult struct {
	Conns     int       `json:"conns"`
	Errors    int       `json:"errors"`
	Seconds   float64   `json:"seconds"`
	PerSecond float64   `json:"perSecond"`
	Handshake Latencies `json:"handshake"`
	TCPDials  int64     `json:"tcpDials"` // TCP connections the client dialled during the run
}

// RunConnect runs workers loops of dial, upgrade and close handshake for d
// and measures the connection rate and the handshake latency (dial to
// upgraded).
func (c *Client) RunConnect(ctx context.Context, workers int, d time.Duration) (ConnectResult, error) {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		all     []time.Duration
		errs    atomic.Int64
		dials0  = c.tcpDials.Load()
		started = time.Now()
	)
	for w := range workers {
		wg.Add(1)
		go func() { // owned by RunConnect, which waits for it
			defer wg.Done()
			var lat []time.Duration
			for i := w; ctx.Err() == nil; i += workers {
				t0 := time.Now()
				ws, err := c.Dial(context.Background(), i, PathIdle)
				if err != nil {
					errs.Add(1)
					continue
				}
				lat = append(lat, time.Since(t0))
				_ = ws.Close(websocket.StatusNormalClosure, "")
			}
			mu.Lock()
			all = append(all, lat...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	secs := time.Since(started).Seconds()
	r := ConnectResult{Conns: len(all), Errors: int(errs.Load()), Seconds: secs,
		PerSecond: float64(len(all)) / secs, Handshake: summarise(all), TCPDials: c.tcpDials.Load() - dials0}
	if r.Conns == 0 {
		return r, errors.New("connect: no connection succeeded")
	}
	return r, nil
}

// openIdle opens n sockets to PathIdle, dialling with par workers, and
// starts a reader per socket so that pings are answered. The returned
// function closes them all and waits for the readers.
func (c *Client) openIdle(ctx context.Context, n, par int) (closeAll func(), err error) {
	conns := make([]*websocket.Conn, n)
	var (
		next   atomic.Int64
		failed atomic.Pointer[error]
		wg     sync.WaitGroup
		rd     sync.WaitGroup
	)
	for range par {
		wg.Add(1)
		go func() { // owned by openIdle, which waits for it
			defer wg.Done()
			for failed.Load() == nil {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				ws, err := c.Dial(ctx, i, PathIdle)
				if err != nil {
					failed.CompareAndSwap(nil, &err)
					return
				}
				conns[i] = ws
				rd.Add(1)
				// Owned by closeAll, which closes ws and waits: the
				// reader answers pings until then.
				go func() {
					defer rd.Done()
					for {
						if _, _, err := ws.Read(context.Background()); err != nil {
							return
						}
					}
				}()
			}
		}()
	}
	wg.Wait()
	closeAll = func() {
		var cw sync.WaitGroup
		for k := range par {
			cw.Add(1)
			go func() { // owned by closeAll, which waits for it
				defer cw.Done()
				for i := k; i < n; i += par {
					if conns[i] != nil {
						_ = conns[i].CloseNow()
					}
				}
			}()
		}
		cw.Wait()
		rd.Wait()
	}
	if p := failed.Load(); p != nil {
		closeAll()
		return nil, fmt.Errorf("opened %d of %d sockets: %w", next.Load()-1, n, *p)
	}
	return closeAll, nil
}

// EchoResult is the outcome of RunEcho.
type EchoResult struct {
	Conns      int       `json:"conns"`
	Size       int       `json:"size"`
	Msgs       int64     `json:"msgs"`
	Seconds    float64   `json:"seconds"`
	PerSecond  float64   `json:"perSecond"`
	Latency    Latencies `json:"latency"`
	ServerCPU  float64   `json:"serverCPU"`  // CPU seconds in the window
	PingsSent  uint64    `json:"pingsSent"`  // keep-alive pings the server sent in the window
	CPUPerMsgM float64   `json:"cpuPerMsgM"` // CPU seconds per million messages
	TCPDials   int64     `json:"tcpDials"`   // TCP connections the client dialled for the sockets
}

// RunEcho opens conns sockets to PathEcho; each sends a size-byte message
// and waits for its echo, in a loop. After warmup, it counts messages and
// round-trip latencies for window, and reads the server's CPU time at both
// ends of the window.
func (c *Client) RunEcho(ctx context.Context, conns, size int, warmup, window time.Duration) (EchoResult, error) {
	r := EchoResult{Conns: conns, Size: size}
	dials0 := c.tcpDials.Load()
	sockets := make([]*websocket.Conn, 0, conns)
	for i := range conns {
		ws, err := c.Dial(ctx, i, PathEcho)
		if err != nil {
			for _, s := range sockets {
				_ = s.CloseNow()
			}
			return r, err
		}
		sockets = append(sockets, ws)
	}
	r.TCPDials = c.tcpDials.Load() - dials0
	var (
		measuring, stop atomic.Bool
		msgs            atomic.Int64
		wg              sync.WaitGroup
		mu              sync.Mutex
		all             []time.Duration
		firstErr        atomic.Pointer[error]
	)
	msg := make([]byte, size)
	for _, ws := range sockets {
		wg.Add(1)
		go func() { // owned by RunEcho, which stops and waits for it
			defer wg.Done()
			var lat []time.Duration
			for !stop.Load() {
				t0 := time.Now()
				err := ws.Write(context.Background(), websocket.MessageBinary, msg)
				if err == nil {
					_, _, err = ws.Read(context.Background())
				}
				if err != nil {
					firstErr.CompareAndSwap(nil, &err)
					break
				}
				if measuring.Load() {
					lat = append(lat, time.Since(t0))
					msgs.Add(1)
				}
			}
			mu.Lock()
			all = append(all, lat...)
			mu.Unlock()
		}()
	}
	time.Sleep(warmup) // a measurement window, not synchronisation
	before, err := c.Stats(false)
	if err == nil {
		measuring.Store(true)
		t0 := time.Now()
		time.Sleep(window)
		measuring.Store(false)
		r.Seconds = time.Since(t0).Seconds()
		var after ServerStats
		after, err = c.Stats(false)
		r.ServerCPU = after.CPU - before.CPU
		r.PingsSent = after.PingsSent - before.PingsSent
	}
	stop.Store(true)
	wg.Wait()
	for _, s := range sockets {
		_ = s.CloseNow()
	}
	if err != nil {
		return r, err
	}
	if p := firstErr.Load(); p != nil {
		return r, fmt.Errorf("echo: %w", *p)
	}
	r.Msgs = msgs.Load()
	r.PerSecond = float64(r.Msgs) / r.Seconds
	r.Latency = summarise(all)
	if r.Msgs > 0 {
		r.CPUPerMsgM = r.ServerCPU / float64(r.Msgs) * 1e6
	}
	return r, nil
}

// IdleResult is the outcome of RunIdle.
type IdleResult struct {
	Conns  int         `json:"conns"`
	Base   ServerStats `json:"base"`   // before any socket, after GC
	Loaded ServerStats `json:"loaded"` // with the sockets, after GC
	// Window bounds the keep-alive measurement (no GC in between).
	WindowStart ServerStats `json:"windowStart"`
	WindowEnd   ServerStats `json:"windowEnd"`
	Seconds     float64     `json:"seconds"`
	After       ServerStats `json:"after"` // after closing, after GC
}

// RunIdle opens conns idle sockets, lets them settle, measures the
// server's CPU and pings over window, then its footprint after GC, and
// closes them.
func (c *Client) RunIdle(ctx context.Context, conns int, settle, window time.Duration) (IdleResult, error) {
	r := IdleResult{Conns: conns}
	var err error
	if r.Base, err = c.Stats(true); err != nil {
		return r, err
	}
	closeAll, err := c.openIdle(ctx, conns, 64)
	if err != nil {
		return r, err
	}
	defer closeAll()
	if _, err = c.waitActive(int64(conns), time.Minute); err != nil {
		return r, err
	}
	time.Sleep(settle) // a measurement window, not synchronisation
	if r.WindowStart, err = c.Stats(false); err != nil {
		return r, err
	}
	t0 := time.Now()
	if c.CPUProfile != "" {
		err = c.profile(window)
	} else {
		time.Sleep(window) // a measurement window, not synchronisation
	}
	if err != nil {
		return r, err
	}
	if r.WindowEnd, err = c.Stats(false); err != nil {
		return r, err
	}
	r.Seconds = time.Since(t0).Seconds()
	if r.Loaded, err = c.Stats(true); err != nil {
		return r, err
	}
	closeAll()
	closeAll = func() {}
	if _, err = c.waitActive(0, time.Minute); err != nil {
		return r, err
	}
	r.After, err = c.Stats(true)
	return r, err
}

// profile writes the server's CPU profile over d (whole seconds, at least
// one) to c.CPUProfile.
func (c *Client) profile(d time.Duration) error {
	secs := max(int((d+time.Second/2)/time.Second), 1)
	hc := &http.Client{Timeout: time.Duration(secs)*time.Second + 30*time.Second}
	res, err := hc.Get(fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", c.CtlAddr, secs))
	if err != nil {
		return fmt.Errorf("cpu profile: %w", err)
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		return fmt.Errorf("cpu profile: %s", res.Status)
	}
	f, err := os.Create(c.CPUProfile)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, res.Body); err != nil {
		f.Close()
		return fmt.Errorf("cpu profile: %w", err)
	}
	return f.Close()
}

// ChurnResult is the outcome of RunChurn.
type ChurnResult struct {
	Open     int         `json:"open"`
	Cycles   int         `json:"cycles"`
	Errors   int         `json:"errors"`
	Seconds  float64     `json:"seconds"`
	Base     ServerStats `json:"base"`     // no socket
	WithOpen ServerStats `json:"withOpen"` // the long-lived sockets open, before the cycles
	Half     ServerStats `json:"half"`     // after half the cycles
	After    ServerStats `json:"after"`    // after the cycles, long-lived sockets still open
	Final    ServerStats `json:"final"`    // after closing everything
}

// RunChurn opens open long-lived sockets, then runs cycles connect/close
// cycles on workers workers, and snapshots the server (after GC) before,
// after and once everything is closed.
func (c *Client) RunChurn(ctx context.Context, open, cycles, workers int) (ChurnResult, error) {
	r := ChurnResult{Open: open, Cycles: cycles}
	var err error
	if r.Base, err = c.Stats(true); err != nil {
		return r, err
	}
	closeAll, err := c.openIdle(ctx, open, 64)
	if err != nil {
		return r, err
	}
	defer func() { closeAll() }()
	if _, err = c.waitActive(int64(open), time.Minute); err != nil {
		return r, err
	}
	if r.WithOpen, err = c.Stats(true); err != nil {
		return r, err
	}
	var (
		next atomic.Int64
		errs atomic.Int64
		t0   = time.Now()
	)
	// Two halves with a snapshot between them: memory that a first burst
	// of cycles leaves behind (goroutine descriptors, grown maps and
	// pools, which the runtime keeps at their peak) shows up in the first
	// half; a leak grows again in the second.
	half := func(upto int) {
		var wg sync.WaitGroup
		for range workers {
			wg.Add(1)
			go func() { // owned by half, which waits for it
				defer wg.Done()
				for ctx.Err() == nil {
					i := int(next.Add(1) - 1)
					if i >= upto {
						return
					}
					ws, err := c.Dial(ctx, i, PathIdle)
					if err != nil {
						errs.Add(1)
						continue
					}
					_ = ws.Close(websocket.StatusNormalClosure, "")
				}
			}()
		}
		wg.Wait()
		next.Store(int64(upto))
	}
	half(cycles / 2)
	if _, err = c.waitActive(int64(open), time.Minute); err != nil {
		return r, err
	}
	if r.Half, err = c.settled(r.WithOpen.Goroutines); err != nil {
		return r, err
	}
	half(cycles)
	r.Seconds = time.Since(t0).Seconds()
	r.Errors = int(errs.Load())
	if _, err = c.waitActive(int64(open), time.Minute); err != nil {
		return r, err
	}
	if r.After, err = c.settled(r.WithOpen.Goroutines); err != nil {
		return r, err
	}
	closeAll()
	closeAll = func() {}
	if _, err = c.waitActive(0, time.Minute); err != nil {
		return r, err
	}
	r.Final, err = c.settled(r.Base.Goroutines)
	return r, err
}

// settled returns the server's stats after GC once its goroutine count is
// back to at most want, or after ten seconds (exiting handlers may still
// be unwinding when the open count drops).
func (c *Client) settled(want int) (ServerStats, error) {
	deadline := time.Now().Add(10 * time.Second)
	for {
		st, err := c.Stats(true)
		if err != nil || st.Goroutines <= want || time.Now().After(deadline) {
			return st, err
		}
		time.Sleep(100 * time.Millisecond) // polling a counter with a deadline
	}
}
