// Command client is the client half of the chiws soak test: it opens many
// WebSockets to the server under test, sends each a sequence-numbered
// message periodically, checks that every echo comes back in order, and
// reports a summary as one JSON line prefixed "RESULT ". It runs in its own
// process so that the server's goroutine and memory figures are its own.
//
// It prints "READY <n>" once every socket is open, runs for -duration,
// waits for the outstanding echoes, closes every socket with 1000 and exits.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/coder/websocket"
)

// Result is the summary printed after "RESULT ".
type Result struct {
	Connected        int64 `json:"connected"`
	DialErrors       int64 `json:"dialErrors"`
	Sent             int64 `json:"sent"`
	Received         int64 `json:"received"`
	Lost             int64 `json:"lost"`
	OutOfOrder       int64 `json:"outOfOrder"`
	UnexpectedCloses int64 `json:"unexpectedCloses"`
	CloseErrors      int64 `json:"closeErrors"`
}

func main() {
	url := flag.String("url", "", "WebSocket URL of the echo endpoint")
	n := flag.Int("n", 1000, "number of sockets")
	duration := flag.Duration("duration", 20*time.Second, "how long to exchange messages once every socket is open")
	interval := flag.Duration("interval", time.Second, "time between two messages on one socket")
	dialers := flag.Int("dialers", 100, "concurrent dials while opening sockets")
	flag.Parse()
	if *url == "" {
		log.Fatal("-url is required")
	}
	raiseFileLimit()

	var res Result
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	socks := make([]*sock, 0, *n)
	var mu sync.Mutex
	var wg sync.WaitGroup
	sem := make(chan struct{}, *dialers)
	for i := 0; i < *n; i++ {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			dctx, dcancel := context.WithTimeout(ctx, 30*time.Second)
			c, _, err := websocket.Dial(dctx, *url, nil)
			dcancel()
			if err != nil {
				atomic.AddInt64(&res.DialErrors, 1)
				log.Printf("dial: %v", err)
				return
			}
			mu.Lock()
			socks = append(socks, &sock{id: i, c: c, replies: make(chan struct{}, 1)})
			mu.Unlock()
		}()
	}
	wg.Wait()
	res.Connected = int64(len(socks))
	fmt.Printf("READY %d\n", len(socks))

	stop := make(chan struct{})
	var run sync.WaitGroup
	for _, s := range socks {
		run.Add(2)
		s.wdone.Add(1)
		go func() { defer run.Done(); s.readLoop(&res) }()
		go func() { defer run.Done(); s.writeLoop(ctx, *interval, stop, &res) }()
	}
	<-time.After(*duration) // the soak's length, not synchronisation
	close(stop)

	// Writers stop after their echo came back; then close everything.
	var closers sync.WaitGroup
	for _, s := range socks {
		closers.Add(1)
		sem <- struct{}{}
		go func() {
			defer closers.Done()
			defer func() { <-sem }()
			s.waitWriter()
			s.closing.Store(true)
			if err := s.c.Close(websocket.StatusNormalClosure, "soak done"); err != nil {
				atomic.AddInt64(&res.CloseErrors, 1)
			}
		}()
	}
	closers.Wait()
	run.Wait()
	res.Lost = res.Sent - res.Received
	out, _ := json.Marshal(res)
	fmt.Printf("RESULT %s\n", out)
}

type sock struct {
	id      int
	c       *websocket.Conn
	next    atomic.Int64  // next sequence number to send
	want    int64         // next sequence number expected back (readLoop only)
	replies chan struct{} // one token per echo, for the writer
	closing atomic.Bool
	wdone   sync.WaitGroup
}

func (s *sock) waitWriter() { s.wdone.Wait() }

// writeLoop sends "id:seq" every interval (first at a random offset, to
// spread the load) and waits for the echo before the next one.
func (s *sock) writeLoop(ctx context.Context, interval time.Duration, stop <-chan struct{}, res *Result) {
	defer s.wdone.Done()
	t := time.NewTimer(rand.N(interval))
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		seq := s.next.Add(1) - 1
		wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		err := s.c.Write(wctx, websocket.MessageText, []byte(strconv.Itoa(s.id)+":"+strconv.FormatInt(seq, 10)))
		cancel()
		if err != nil {
			return
		}
		atomic.AddInt64(&res.Sent, 1)
		select {
		case <-s.replies:
		case <-time.After(30 * time.Second):
			return // counted as lost
		}
		t.Reset(interval)
	}
}

// readLoop reads echoes (and, by reading, answers the server's pings) and
// checks their order.
func (s *sock) readLoop(res *Result) {
	prefix := strconv.Itoa(s.id) + ":"
	for {
		_, p, err := s.c.Read(context.Background())
		if err != nil {
			if !s.closing.Load() {
				atomic.AddInt64(&res.UnexpectedCloses, 1)
				log.Printf("socket %d: unexpected close: %v", s.id, err)
			}
			return
		}
		if string(p) != prefix+strconv.FormatInt(s.want, 10) {
			atomic.AddInt64(&res.OutOfOrder, 1)
			log.Printf("socket %d: got %q, want seq %d", s.id, p, s.want)
		}
		s.want++
		atomic.AddInt64(&res.Received, 1)
		s.replies <- struct{}{}
	}
}

// raiseFileLimit lifts the soft RLIMIT_NOFILE to the hard limit.
func raiseFileLimit() {
	var l syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
		log.Printf("getrlimit: %v", err)
		return
	}
	l.Cur = l.Max
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
		log.Printf("setrlimit: %v", err)
	}
}
