package wstest

import (
	"io"
	"net"
	"sync"
)

// Proxy is a loopback TCP proxy. Stall makes it stop forwarding in both
// directions while keeping every connection open: both ends see silence, no
// FIN and no reset, which is what a peer that lost its network looks like.
type Proxy struct {
	ln     net.Listener
	target string

	wg      sync.WaitGroup
	mu      sync.Mutex
	conns   []net.Conn
	stalled bool
	frozen  map[net.Conn]bool // stalled by StallExisting
	closed  bool
}

// NewProxy listens on 127.0.0.1 and forwards every connection to target.
func NewProxy(target string) (*Proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &Proxy{ln: ln, target: target}
	p.wg.Add(1)
	go p.serve() // owned by p; Close stops it and waits
	return p, nil
}

// Addr is the proxy's listening address.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Stall stops forwarding: bytes read from either side from now on are
// dropped. Connections stay open until Close.
func (p *Proxy) Stall() {
	p.mu.Lock()
	p.stalled = true
	p.mu.Unlock()
}

// StallExisting stalls the connections open now, as Stall does, and keeps
// forwarding new ones: a route that black-holed the old connections.
func (p *Proxy) StallExisting() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.frozen == nil {
		p.frozen = make(map[net.Conn]bool)
	}
	for _, c := range p.conns {
		p.frozen[c] = true
	}
}

func (p *Proxy) isStalled(src net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stalled || p.frozen[src]
}

// Close closes the listener and every connection, and waits for the
// proxy's goroutines.
func (p *Proxy) Close() error {
	err := p.ln.Close()
	p.mu.Lock()
	p.closed = true
	for _, c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
	return err
}

func (p *Proxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		c.Close()
		return false
	}
	p.conns = append(p.conns, c)
	return true
}

func (p *Proxy) serve() {
	defer p.wg.Done()
	for {
		client, err := p.ln.Accept()
		if err != nil {
			return
		}
		server, err := net.Dial("tcp", p.target)
		if err != nil {
			client.Close()
			continue
		}
		if !p.track(client) || !p.track(server) {
			server.Close()
			continue
		}
		p.wg.Add(2)
		go p.pipe(server, client) // owned by p; ends when Close closes both ends
		go p.pipe(client, server) // likewise
	}
}

// pipe copies src to dst until either fails, dropping data once stalled.
// It does not close anything on EOF while stalled, so a vanished peer's
// FIN is not forwarded either.
func (p *Proxy) pipe(dst, src net.Conn) {
	defer p.wg.Done()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 && !p.isStalled(src) {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			if err == io.EOF && !p.isStalled(src) {
				// Forward a half-close as a full close: enough for tests.
				dst.Close()
			}
			return
		}
	}
}
