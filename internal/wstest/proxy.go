package wstest

import (
	"net"
	"sync"
	"time"
)

// Direction is a way through a Proxy: Up from the clients to the target,
// Down from the target to the clients, or Both.
type Direction uint8

const (
	Up   Direction = 1 << iota // from the clients to the target
	Down                       // from the target to the clients
	Both = Up | Down
)

// pace is the Throttle tick: a throttled direction forwards at most one
// tick's share of its rate per tick.
const pace = 5 * time.Millisecond

// Proxy is a loopback TCP proxy that a test can degrade while its
// connections stay open:
//
//   - Stall and StallExisting drop what they read, in both directions, and
//     forward no FIN and no reset: a peer that lost its network. There is
//     no way back from a stall.
//   - Pause holds what it reads in the paused directions (the kernel's
//     buffers hold the rest) and Resume forwards it, in order, nothing
//     lost: a network cut that TCP survives.
//   - Throttle forwards a direction at about a given rate: a slow link.
//
// Otherwise it forwards everything as it comes. When one end of a
// connection closes or fails, the proxy closes the other end (a half-close
// is forwarded as a full close), unless the connection is stalled. Close
// ends everything.
type Proxy struct {
	ln     net.Listener
	target string

	wg       sync.WaitGroup
	mu       sync.Mutex
	resumed  *sync.Cond // broadcast by Resume and Close
	conns    []net.Conn
	stalled  bool
	frozen   map[net.Conn]bool // stalled by StallExisting
	paused   Direction
	upRate   int // Throttle's bytes per second for Up; 0 for no limit
	downRate int // likewise, Down
	closed   bool
}

// NewProxy listens on 127.0.0.1 and forwards every connection to target.
func NewProxy(target string) (*Proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &Proxy{ln: ln, target: target}
	p.resumed = sync.NewCond(&p.mu)
	p.wg.Add(1)
	go p.serve() // owned by p; Close stops it and waits
	return p, nil
}

// Addr is the proxy's listening address.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Stall stops forwarding: bytes read from either side from now on are
// dropped, and an end that closes is not reported to the other.
// Connections stay open until Close.
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

// Pause stops forwarding in direction d, on every connection, existing
// and new, until Resume. Nothing is lost: the proxy holds what it has
// read (at most one read per connection and direction, EOF included) and
// the kernel's buffers hold the rest, so the sender's writes block once
// they are full, as over a cut that TCP survives.
func (p *Proxy) Pause(d Direction) {
	p.mu.Lock()
	p.paused |= d
	p.mu.Unlock()
}

// Resume forwards again in direction d, what was held first. Resuming a
// direction that is not paused does nothing.
func (p *Proxy) Resume(d Direction) {
	p.mu.Lock()
	p.paused &^= d
	p.resumed.Broadcast()
	p.mu.Unlock()
}

// Throttle forwards direction d at about bytesPerSecond, on every
// connection, existing and new, from its next write on: at most one
// 5 ms share of the rate per 5 ms, so a large message takes many reads to
// arrive. The proxy reads no more than it forwards, so the sender meets
// back-pressure. A rate of 0 or less lifts the limit.
func (p *Proxy) Throttle(d Direction, bytesPerSecond int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	bytesPerSecond = max(bytesPerSecond, 0)
	if d&Up != 0 {
		p.upRate = bytesPerSecond
	}
	if d&Down != 0 {
		p.downRate = bytesPerSecond
	}
}

// rate is direction d's Throttle rate, 0 for no limit.
func (p *Proxy) rate(d Direction) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if d == Up {
		return p.upRate
	}
	return p.downRate
}

// share is what a direction throttled to rate forwards per pace tick.
func share(rate int) int { return max(rate/int(time.Second/pace), 1) }

// gate waits while direction d is paused. It reports whether the proxy is
// still open and whether src's connection is stalled.
func (p *Proxy) gate(src net.Conn, d Direction) (open, stalled bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for p.paused&d != 0 && !p.closed {
		p.resumed.Wait()
	}
	return !p.closed, p.stalled || p.frozen[src]
}

// Close closes the listener and every connection, and waits for the
// proxy's goroutines.
func (p *Proxy) Close() error {
	err := p.ln.Close()
	p.mu.Lock()
	p.closed = true
	p.resumed.Broadcast()
	for _, c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
	return err
}

func (p *Proxy) track(cs ...net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		for _, c := range cs {
			c.Close()
		}
		return false
	}
	p.conns = append(p.conns, cs...)
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
		if !p.track(client, server) {
			continue
		}
		p.wg.Add(2)
		go p.pipe(server, client, Up)   // owned by p; ends when either end closes or fails, or Close closes both
		go p.pipe(client, server, Down) // likewise
	}
}

// pipe copies src to dst, in direction d, until either fails or the proxy
// closes: it waits while d is paused, drops data once stalled, and paces
// its writes while d is throttled. When src ends or dst fails it closes
// dst, which ends the other direction too, unless stalled: a vanished
// peer's FIN is not forwarded either.
func (p *Proxy) pipe(dst, src net.Conn, d Direction) {
	defer p.wg.Done()
	var tick *time.Ticker // while throttled
	defer func() {
		if tick != nil {
			tick.Stop()
		}
	}()
	buf := make([]byte, 32<<10)
	for {
		size := len(buf)
		if r := p.rate(d); r > 0 {
			size = share(r)
			if size > len(buf) {
				buf = make([]byte, size)
			}
		}
		n, err := src.Read(buf[:size])
		open, stalled := p.gate(src, d)
		if !open {
			return
		}
		for data := buf[:n]; len(data) > 0 && !stalled; {
			size, r := len(data), p.rate(d)
			throttled := r > 0
			if throttled {
				size = min(size, share(r))
			}
			if _, werr := dst.Write(data[:size]); werr != nil {
				dst.Close()
				return
			}
			data = data[size:]
			switch {
			case throttled && tick == nil:
				tick = time.NewTicker(pace)
				<-tick.C // pacing, not synchronisation
			case throttled:
				<-tick.C
			case tick != nil:
				tick.Stop()
				tick = nil
			}
		}
		if err != nil {
			if !stalled {
				dst.Close()
			}
			return
		}
	}
}
