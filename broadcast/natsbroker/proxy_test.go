package natsbroker_test

import (
	"net"
	"sync"
	"testing"
)

// gateProxy is a loopback TCP proxy that the test can pause: while paused
// it forwards nothing in either direction (or, PauseUp, from the clients
// to the target only) but keeps every connection open, and holds what it
// read (the kernel's buffers hold the rest), as a network cut that TCP
// survives would. Resume forwards what was held, in order. (wstest.Proxy
// drops data once stalled and cannot resume.)
type gateProxy struct {
	ln     net.Listener
	target string

	wg     sync.WaitGroup
	mu     sync.Mutex
	cond   *sync.Cond
	paused bool // both directions
	upOnly bool // client to target only
	closed bool
	conns  []net.Conn
}

// newGateProxy forwards a loopback port to target until the test ends.
func newGateProxy(t *testing.T, target string) *gateProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &gateProxy{ln: ln, target: target}
	p.cond = sync.NewCond(&p.mu)
	p.wg.Add(1)
	go p.serve() // owned by p: close stops it and waits
	t.Cleanup(p.close)
	return p
}

// URL is the proxy's address as a nats:// URL.
func (p *gateProxy) URL() string { return "nats://" + p.ln.Addr().String() }

// Pause stops forwarding in both directions.
func (p *gateProxy) Pause() {
	p.mu.Lock()
	p.paused = true
	p.mu.Unlock()
}

// PauseUp stops forwarding from the clients to the target; the other
// direction flows: a one-way cut.
func (p *gateProxy) PauseUp() {
	p.mu.Lock()
	p.upOnly = true
	p.mu.Unlock()
}

// Resume forwards again, in both directions, what was held first.
func (p *gateProxy) Resume() {
	p.mu.Lock()
	p.paused, p.upOnly = false, false
	p.cond.Broadcast()
	p.mu.Unlock()
}

// close closes the listener and every connection and waits for the
// proxy's goroutines.
func (p *gateProxy) close() {
	_ = p.ln.Close()
	p.mu.Lock()
	p.closed = true
	p.cond.Broadcast()
	for _, c := range p.conns {
		_ = c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

// pass waits while the proxy is paused in the direction of up (client to
// target); it reports false once closed.
func (p *gateProxy) pass(up bool) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	for (p.paused || up && p.upOnly) && !p.closed {
		p.cond.Wait()
	}
	return !p.closed
}

func (p *gateProxy) track(cs ...net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		for _, c := range cs {
			_ = c.Close()
		}
		return false
	}
	p.conns = append(p.conns, cs...)
	return true
}

func (p *gateProxy) serve() {
	defer p.wg.Done()
	for {
		client, err := p.ln.Accept()
		if err != nil {
			return
		}
		server, err := net.Dial("tcp", p.target)
		if err != nil {
			_ = client.Close()
			continue
		}
		if !p.track(client, server) {
			continue
		}
		p.wg.Add(2)
		go p.pipe(server, client, true)  // owned by p: ends when either end closes; close closes both and waits
		go p.pipe(client, server, false) // likewise
	}
}

// pipe copies src to dst, holding data and EOF while paused; up is the
// direction from a client to the target. An EOF or an error closes dst,
// which ends the other direction too.
func (p *gateProxy) pipe(dst, src net.Conn, up bool) {
	defer p.wg.Done()
	defer dst.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if !p.pass(up) {
			return
		}
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}
