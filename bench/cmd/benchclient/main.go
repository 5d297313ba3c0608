// Command benchclient drives a benchserver over loopback for the bench
// harness and prints its result as JSON on stdout. Every mode is bounded
// by its counts and by -timeout.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"log"
	"os"
	"syscall"
	"time"

	"github.com/chiws/chiws/bench"
)

func main() {
	addr := flag.String("addr", "", "server host:port (127.0.0.1)")
	ctl := flag.String("ctl", "", "server control host:port (127.0.0.1)")
	mode := flag.String("mode", "", "connect, echo, idle or churn")
	sources := flag.Int("sources", 8, "local addresses 127.0.0.2.. to dial from")
	proto := flag.String("proto", bench.ProtoH1, "h1: an HTTP/1.1 upgrade per socket; h2c: RFC 8441 extended CONNECT over cleartext HTTP/2, one TCP connection per source")
	workers := flag.Int("workers", 16, "connect/churn: parallel loops")
	duration := flag.Duration("duration", 5*time.Second, "connect: how long")
	conns := flag.Int("conns", 1000, "echo/idle: sockets")
	size := flag.Int("size", 128, "echo: message size in bytes")
	warmup := flag.Duration("warmup", time.Second, "echo: warm-up before the window")
	window := flag.Duration("window", 5*time.Second, "echo/idle: measurement window")
	settle := flag.Duration("settle", 2*time.Second, "idle: wait before the window")
	open := flag.Int("open", 5000, "churn: long-lived sockets")
	cycles := flag.Int("cycles", 100000, "churn: connect/close cycles")
	timeout := flag.Duration("timeout", 5*time.Minute, "give up after this long")
	cpuProfile := flag.String("cpuprofile", "", "idle: write the server's CPU profile over the window (whole seconds) to this file")
	flag.Parse()
	log.SetFlags(0)
	log.SetPrefix("benchclient: ")
	if *addr == "" || *ctl == "" {
		log.Fatal("-addr and -ctl are required")
	}
	raiseNoFile()

	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	var c *bench.Client
	switch *proto {
	case bench.ProtoH1:
		c = bench.NewClient(*addr, *ctl, *sources)
	case bench.ProtoH2C:
		c = bench.NewH2CClient(*addr, *ctl, *sources)
	default:
		log.Fatalf("unknown -proto %q", *proto)
	}
	c.CPUProfile = *cpuProfile
	defer c.Close()
	var (
		res any
		err error
	)
	switch *mode {
	case "connect":
		res, err = c.RunConnect(ctx, *workers, *duration)
	case "echo":
		res, err = c.RunEcho(ctx, *conns, *size, *warmup, *window)
	case "idle":
		res, err = c.RunIdle(ctx, *conns, *settle, *window)
	case "churn":
		res, err = c.RunChurn(ctx, *open, *cycles, *workers)
	default:
		log.Fatalf("unknown -mode %q", *mode)
	}
	if err != nil {
		log.Fatalf("%s: %v", *mode, err)
	}
	if err := json.NewEncoder(os.Stdout).Encode(res); err != nil {
		log.Fatal(err)
	}
}

func raiseNoFile() {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err == nil && rl.Cur < rl.Max {
		rl.Cur = rl.Max
		_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl)
	}
}
