// Command example runs the chiws echo application: the page and endpoints of
// ASP.NET Core's WebSockets sample, on chi and chiws.
//
//	go run ./example                     # http://localhost:5000
//	go run ./example -addr :8080 -log-level debug
//	GODEBUG=http2xconnect=1 go run ./example -tls   # https://localhost:5000, WebSockets over HTTP/2
//
// Endpoints: / (echo page), /ws (echo), /broadcast (a room where every
// message goes to every member). SIGINT or SIGTERM stops the server
// gracefully: every socket receives 1001 Going Away and the process exits 0.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/chiws/chiws"
	"github.com/chiws/chiws/example/app"
	"github.com/coder/websocket"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// shutdownTimeout bounds the graceful stop; sockets still open after it are
// closed without a handshake.
const shutdownTimeout = 15 * time.Second

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stderr, nil)
	stop()
	switch {
	case errors.Is(err, flag.ErrHelp):
		os.Exit(0)
	case err != nil:
		fmt.Fprintln(os.Stderr, "example:", err)
		os.Exit(1)
	}
}

// config is the parsed command line.
type config struct {
	addr            string
	app             app.Config
	logLevel        string
	logFormat       string
	tls             bool
	tlsCert, tlsKey string
}

func parseFlags(args []string, out io.Writer) (config, error) {
	var c config
	var origins, subprotocols, compression string
	fs := flag.NewFlagSet("example", flag.ContinueOnError)
	fs.SetOutput(out)
	fs.Usage = func() {
		fmt.Fprintf(out, "Usage: example [flags]\n\n"+
			"Serves the chiws echo page on / and WebSockets on /ws (echo) and\n"+
			"/broadcast (every message to every member).\n\nFlags:\n")
		fs.PrintDefaults()
	}
	fs.StringVar(&c.addr, "addr", "localhost:5000", "listen address")
	fs.StringVar(&origins, "allowed-origins", "",
		"comma-separated Origin values allowed to connect, e.g. https://app.example.com,http://localhost:*\n"+
			"(empty: same origin only; \"*\": any origin)")
	fs.DurationVar(&c.app.KeepAliveInterval, "keepalive", chiws.DefaultKeepAliveInterval,
		"interval between keep-alive pings; negative disables them")
	fs.DurationVar(&c.app.KeepAliveTimeout, "keepalive-timeout", chiws.DefaultKeepAliveTimeout,
		"how long a pong may take before the socket is aborted; negative waits forever")
	fs.Int64Var(&c.app.ReadLimit, "read-limit", chiws.DefaultReadLimit, "largest message in bytes; larger ones close the socket with 1009")
	fs.IntVar(&c.app.MaxConnections, "max-connections", 0, "maximum concurrent WebSockets; 0 means unlimited")
	fs.StringVar(&compression, "compression", "off",
		"permessage-deflate: off, context-takeover or no-context-takeover")
	fs.StringVar(&subprotocols, "subprotocols", "", "comma-separated subprotocols the server speaks, preferred first")
	fs.BoolVar(&c.tls, "tls", false,
		"serve HTTPS with HTTP/2, with a self-signed certificate for localhost, 127.0.0.1 and ::1 made at start\n"+
			"(WebSockets over HTTP/2 need GODEBUG=http2xconnect=1 in the environment)")
	fs.StringVar(&c.tlsCert, "tls-cert", "", "certificate file (PEM) for -tls, instead of a self-signed one")
	fs.StringVar(&c.tlsKey, "tls-key", "", "private key file (PEM) for -tls-cert")
	fs.StringVar(&c.logLevel, "log-level", "info", "log level: debug, info or warn")
	fs.StringVar(&c.logFormat, "log-format", "console", "log format: console or json")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	c.app.AllowedOrigins = splitList(origins)
	c.app.Subprotocols = splitList(subprotocols)
	switch compression {
	case "off":
		c.app.CompressionMode = websocket.CompressionDisabled
	case "context-takeover":
		c.app.CompressionMode = websocket.CompressionContextTakeover
	case "no-context-takeover":
		c.app.CompressionMode = websocket.CompressionNoContextTakeover
	default:
		return c, fmt.Errorf("-compression must be off, context-takeover or no-context-takeover, got %q", compression)
	}
	if (c.tlsCert == "") != (c.tlsKey == "") {
		return c, errors.New("-tls-cert and -tls-key go together")
	}
	if c.tlsCert != "" {
		c.tls = true
	}
	return c, nil
}

// splitList splits a comma-separated flag value, dropping empty items.
func splitList(s string) []string {
	var out []string
	for _, v := range strings.Split(s, ",") {
		if v = strings.TrimSpace(v); v != "" {
			out = append(out, v)
		}
	}
	return out
}

func newLogger(level, format string, out io.Writer) (*zap.Logger, error) {
	var lvl zapcore.Level
	switch level {
	case "debug", "info", "warn":
		if err := lvl.Set(level); err != nil {
			return nil, err
		}
	default:
		return nil, fmt.Errorf("-log-level must be debug, info or warn, got %q", level)
	}
	var enc zapcore.Encoder
	switch format {
	case "console":
		ec := zap.NewDevelopmentEncoderConfig()
		ec.EncodeTime = zapcore.TimeEncoderOfLayout("15:04:05.000")
		enc = zapcore.NewConsoleEncoder(ec)
	case "json":
		enc = zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig())
	default:
		return nil, fmt.Errorf("-log-format must be console or json, got %q", format)
	}
	core := zapcore.NewCore(enc, zapcore.Lock(zapcore.AddSync(out)), lvl)
	return zap.New(core), nil
}

// run serves until ctx is cancelled, then stops gracefully. ready, when not
// nil, is called with the listening address once the server accepts
// connections.
func run(ctx context.Context, args []string, out io.Writer, ready func(addr string)) error {
	cfg, err := parseFlags(args, out)
	if err != nil {
		return err
	}
	log, err := newLogger(cfg.logLevel, cfg.logFormat, out)
	if err != nil {
		return err
	}
	defer func() { _ = log.Sync() }()
	cfg.app.Logger = log

	a, err := app.New(cfg.app)
	if err != nil {
		return fmt.Errorf("invalid configuration: %w", err)
	}
	ln, err := net.Listen("tcp", cfg.addr)
	if err != nil {
		_ = a.Shutdown(context.Background())
		return err
	}
	srv := &http.Server{
		Handler:           a.Handler,
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          zap.NewStdLog(log.Named("http")),
	}
	scheme := "http"
	if cfg.tls {
		scheme = "https"
		tc, err := tlsConfig(cfg.tlsCert, cfg.tlsKey)
		if err != nil {
			_ = ln.Close()
			_ = a.Shutdown(context.Background())
			return err
		}
		srv.TLSConfig = tc
		if http2WebSockets() {
			log.Info("WebSockets over HTTP/2 (RFC 8441) enabled")
		} else {
			log.Info("WebSockets over HTTP/2 disabled: browsers use HTTP/1.1 for them; " +
				"start with GODEBUG=http2xconnect=1 to enable them")
		}
	}
	served := make(chan error, 1)
	go func() { // owned by run, which receives from served
		if cfg.tls {
			served <- srv.ServeTLS(ln, "", "")
		} else {
			served <- srv.Serve(ln)
		}
	}()

	log.Info("listening",
		zap.String("addr", ln.Addr().String()),
		zap.String("url", scheme+"://"+displayAddr(ln.Addr())),
		zap.Strings("allowedOrigins", cfg.app.AllowedOrigins))
	if ready != nil {
		ready(ln.Addr().String())
	}

	select {
	case err := <-served:
		_ = a.Shutdown(context.Background())
		return err
	case <-ctx.Done():
	}
	log.Info("shutting down")
	sctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	// The sockets are drained while the server shuts down: it waits for
	// HTTP/2 streams, WebSockets included, and does not see hijacked
	// HTTP/1.1 connections. a.Shutdown closes both kinds with 1001.
	drained := make(chan error, 1)
	srv.RegisterOnShutdown(func() { drained <- a.Shutdown(sctx) })
	err = errors.Join(srv.Shutdown(sctx), <-drained)
	if serr := <-served; !errors.Is(serr, http.ErrServerClosed) {
		err = errors.Join(err, serr)
	}
	if err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	log.Info("stopped")
	return nil
}

// http2WebSockets reports whether net/http's HTTP/2 server accepts
// extended CONNECT: it reads GODEBUG once, when the process starts.
func http2WebSockets() bool {
	for _, s := range strings.Split(os.Getenv("GODEBUG"), ",") {
		if strings.TrimSpace(s) == "http2xconnect=1" {
			return true
		}
	}
	return false
}

// displayAddr turns a listening address into a clickable host:port.
func displayAddr(a net.Addr) string {
	host, port, err := net.SplitHostPort(a.String())
	if err != nil {
		return a.String()
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
		host = "localhost"
	}
	return net.JoinHostPort(host, port)
}
