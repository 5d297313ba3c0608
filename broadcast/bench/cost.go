package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/chiws/chiws/broadcast"
	"github.com/chiws/chiws/broadcast/natsbroker"
	"github.com/chiws/chiws/broadcast/redisbroker"
	"github.com/redis/go-redis/v9"
)

// costRow is a broker's cost per message under one publish semantics.
type costRow struct {
	broker, semantics string
	wall, cpu         float64 // ns per message: publish of n messages until the last arrived; this process's CPU
	serverCPU         float64 // ns per message of the redis-server processes; -1 when none
	allocs, bytes     float64
	profile           string // CPU profile of this process over the measurement
	err               error
}

// pipelineDepth is how many PUBLISH commands share one round trip in the
// pipelined Redis row.
const pipelineDepth = 64

// publishMode publishes the n messages of one row.
type publishMode struct {
	broker    string // the row's name
	semantics string
	publish   func(n int, p []byte) error
	sub       broadcast.Broker // where the messages are received
}

// measureCost publishes n messages on the first broker of nb's bus to one
// subscription on the second, under each publish semantics the bus has.
func measureCost(n int, nb namedBus, profileDir string) []costRow {
	fmt.Fprintf(os.Stderr, "bench: cost %s\n", nb.key)
	bs, err := nb.new()
	if err != nil {
		return []costRow{{broker: nb.name, err: err}}
	}
	defer bs.stop()
	ctx := context.Background()
	each := func(b broadcast.Broker) func(n int, p []byte) error {
		return func(n int, p []byte) error {
			for range n {
				if err := b.Publish(ctx, "cost", p); err != nil {
					return err
				}
			}
			return nil
		}
	}
	b, sub := bs.brokers[0], bs.brokers[1]
	var modes []publishMode
	switch nb.key {
	case "memory":
		modes = []publishMode{{nb.name, "Publish (handlers run inside it)", each(b), sub}}
	case "nats":
		// The embedded deployment connects in-process (no socket); the
		// same servers over TCP on loopback compare with Redis.
		var tcp []broadcast.Broker
		for _, u := range bs.nats[:2] {
			tb, err := natsbroker.Connect(u, natsbroker.Options{})
			if err != nil {
				return []costRow{{broker: nb.name, err: err}}
			}
			defer tb.Close()
			tcp = append(tcp, tb)
		}
		acked := func(b broadcast.Broker) func(n int, p []byte) error {
			nc := b.(*natsbroker.Broker).Conn()
			return func(n int, p []byte) error {
				for range n {
					if err := b.Publish(ctx, "cost", p); err != nil {
						return err
					}
					if err := nc.FlushTimeout(10 * time.Second); err != nil {
						return err
					}
				}
				return nil
			}
		}
		inproc, overTCP := nb.name+", in-process connection", nb.name+", TCP on loopback"
		modes = []publishMode{
			{inproc, "fire-and-forget: Publish returns once nats.go buffered it (what Hub.Publish does)", each(b), sub},
			{inproc, "acknowledged: Publish, then Flush (a PING/PONG round trip to the server) per message", acked(b), sub},
			{overTCP, "fire-and-forget: Publish returns once nats.go buffered it (what Hub.Publish does)", each(tcp[0]), tcp[1]},
			{overTCP, "acknowledged: Publish, then Flush (a PING/PONG round trip to the server) per message", acked(tcp[0]), tcp[1]},
		}
	default: // Redis
		rb := b.(*redisbroker.Broker)
		ch, err := rb.Channel("cost")
		if err != nil {
			return []costRow{{broker: nb.name, err: err}}
		}
		_, sharded := bs.redis.(*redis.ClusterClient)
		cmd := "PUBLISH"
		if sharded {
			cmd = "SPUBLISH"
		}
		modes = []publishMode{
			{nb.name, "acknowledged: " + cmd + " and its reply (what Hub.Publish does)", each(b), sub},
			{nb.name, fmt.Sprintf("pipelined: %d %s per round trip, on a client of its own (go-redis Pipeline, not the broker)", pipelineDepth, cmd),
				func(n int, p []byte) error {
					for sent := 0; sent < n; {
						pl := bs.redis.Pipeline()
						for k := 0; k < pipelineDepth && sent < n; k++ {
							if sharded {
								pl.SPublish(ctx, ch, p)
							} else {
								pl.Publish(ctx, ch, p)
							}
							sent++
						}
						if _, err := pl.Exec(ctx); err != nil {
							return err
						}
					}
					return nil
				}, sub},
		}
	}
	var rows []costRow
	for i, m := range modes {
		r := costOne(bs, n, m, filepath.Join(profileDir, fmt.Sprintf("cost-%s-%d.pprof", nb.key, i)))
		r.broker = m.broker
		rows = append(rows, r)
	}
	return rows
}

func costOne(bs *bus, n int, m publishMode, profile string) (r costRow) {
	r.semantics = m.semantics
	r.profile = profile
	r.serverCPU = -1
	// Warm-up messages (first byte 0) cross the bus until one arrives;
	// only measured ones (first byte 1) are counted.
	var warm, got atomic.Int64
	done := make(chan struct{})
	sub, err := m.sub.Subscribe(context.Background(), "cost", func(p []byte) {
		if len(p) > 0 && p[0] == 0 {
			warm.Add(1)
			return
		}
		if got.Add(1) == int64(n) {
			close(done)
		}
	})
	if err != nil {
		r.err = err
		return r
	}
	defer func() { _ = sub.Unsubscribe() }()
	p := make([]byte, 2+128)
	deadline := time.Now().Add(30 * time.Second)
	for warm.Load() == 0 {
		if err := m.publish(1, p); err != nil {
			r.err = err
			return r
		}
		if time.Now().After(deadline) {
			r.err = fmt.Errorf("cost subscription never received")
			return r
		}
		time.Sleep(10 * time.Millisecond)
	}
	p[0] = 1
	f, err := os.Create(profile)
	if err != nil {
		r.err = err
		return r
	}
	defer f.Close()
	if err := pprof.StartCPUProfile(f); err != nil {
		r.err = err
		return r
	}
	defer pprof.StopCPUProfile() // a second Stop is a no-op
	var m0, m1 runtime.MemStats
	runtime.ReadMemStats(&m0)
	s0 := procCPU(bs.pids)
	c0 := cpuTime()
	t0 := time.Now()
	if err := m.publish(n, p); err != nil {
		r.err = err
		return r
	}
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		r.err = fmt.Errorf("%d of %d delivered", got.Load(), n)
		return r
	}
	el := time.Since(t0)
	c1 := cpuTime()
	s1 := procCPU(bs.pids)
	runtime.ReadMemStats(&m1)
	pprof.StopCPUProfile()
	r.wall = float64(el) / float64(n)
	r.cpu = float64(c1-c0) / float64(n)
	if len(bs.pids) > 0 {
		r.serverCPU = float64(s1-s0) / float64(n)
	}
	r.allocs = float64(m1.Mallocs-m0.Mallocs) / float64(n)
	r.bytes = float64(m1.TotalAlloc-m0.TotalAlloc) / float64(n)
	return r
}

// procCPU sums the user and system time of processes from /proc (in
// clock ticks of 10 ms).
func procCPU(pids []int) time.Duration {
	var total time.Duration
	for _, pid := range pids {
		b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
		if err != nil {
			continue
		}
		s := string(b)
		if i := strings.LastIndexByte(s, ')'); i >= 0 {
			s = s[i+1:]
		}
		f := strings.Fields(s) // f[0] is field 3 (state); utime, stime are fields 14, 15
		if len(f) < 13 {
			continue
		}
		u, _ := strconv.ParseInt(f[11], 10, 64)
		st, _ := strconv.ParseInt(f[12], 10, 64)
		total += time.Duration(u+st) * 10 * time.Millisecond
	}
	return total
}
