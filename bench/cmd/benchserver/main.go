// Command benchserver serves one benchmark candidate on 127.0.0.1 for the
// bench harness: it prints "LISTEN host:port ctlhost:port" on stdout,
// serves /echo and /idle on the first address and the /_stats control
// endpoint and net/http/pprof on the second, and exits when its standard
// input closes, on SIGINT/SIGTERM, or after -max. With -h2c it also
// serves cleartext HTTP/2 (prior knowledge) on the first address, and
// must then be started with GODEBUG=http2xconnect=1 in its environment so
// that net/http's HTTP/2 server accepts WebSockets (extended CONNECT).
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"
	"time"

	"github.com/chiws/chiws/bench"
	"github.com/chiws/chiws/internal/xconnect"
)

func main() {
	candidate := flag.String("candidate", bench.Chiws, "candidate: coder, coder-ping, chi-coder, chiws, gorilla or gorilla-ping")
	keepAlive := flag.Duration("keepalive", 0, "chiws KeepAliveInterval / coder-ping and gorilla-ping ticker (0 = 2m, <0 off)")
	addr := flag.String("addr", "127.0.0.1:0", "listen address (loopback)")
	maxLife := flag.Duration("max", 15*time.Minute, "exit after this long regardless")
	pad := flag.Int("pad", 0, "diagnostic: run the candidate under this many extra stack frames (see bench.Pad)")
	maxStack := flag.Int("maxstack", 0, "diagnostic: debug.SetMaxStack(n), to find the call that grows a goroutine's stack past n bytes")
	h2c := flag.Bool("h2c", false, "also serve cleartext HTTP/2 with prior knowledge (bench.ConfigureH2C); needs GODEBUG="+xconnect.Setting)
	flag.Parse()
	log.SetFlags(0)
	log.SetPrefix("benchserver: ")

	if *h2c && !xconnect.Enabled() {
		log.Fatalf("-h2c: start the process with GODEBUG=%s (net/http reads it at start-up), or WebSockets over HTTP/2 are refused", xconnect.Setting)
	}
	raiseNoFile()
	if *maxStack > 0 {
		debug.SetMaxStack(*maxStack)
	}
	s, err := bench.NewServer(bench.ServerConfig{Candidate: *candidate, KeepAlive: *keepAlive})
	if err != nil {
		log.Fatal(err)
	}
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Fatal(err)
	}
	ctlLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	srv := &http.Server{Handler: bench.Pad(s, *pad), ReadHeaderTimeout: 30 * time.Second}
	if *h2c {
		bench.ConfigureH2C(srv)
	}
	mux := http.NewServeMux()
	mux.Handle(bench.PathStats, bench.StatsHandler(s))
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	ctl := &http.Server{Handler: mux, ReadHeaderTimeout: 30 * time.Second}
	served := make(chan error, 2)
	go func() { served <- srv.Serve(ln) }()    // owned by main, which closes srv
	go func() { served <- ctl.Serve(ctlLn) }() // owned by main, which closes ctl
	fmt.Printf("LISTEN %s %s\n", ln.Addr(), ctlLn.Addr())

	stdinClosed := make(chan struct{})
	go func() { // owned by main; ends with the process
		_, _ = io.Copy(io.Discard, os.Stdin)
		close(stdinClosed)
	}()
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	select {
	case <-stdinClosed:
	case <-sig:
	case <-time.After(*maxLife):
		log.Printf("exiting after -max %v", *maxLife)
	case err := <-served:
		log.Fatal(err)
	}
	_ = srv.Close()
	_ = ctl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = s.Shutdown(ctx)
}

// raiseNoFile raises the open-file soft limit to the hard limit (Go does
// it too at start-up; this makes it explicit and visible on failure).
func raiseNoFile() {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return
	}
	if rl.Cur < rl.Max {
		rl.Cur = rl.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
			log.Printf("raising RLIMIT_NOFILE: %v", err)
		}
	}
}
