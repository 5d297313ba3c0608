// Command example runs the chiws echo application: the page and endpoints of
// ASP.NET Core's WebSockets sample, on chi and chiws.
//
//	go run ./example                     # http://localhost:5000
//	go run ./example -addr :8080 -log-level debug
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
	addr      string
	app       app.Config
	logLevel  string
	logFormat string
}

func parseFlags(args []string, out io.Writer) (config, error) {
	var c config
	var origins string
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
	fs.StringVar(&c.logLevel, "log-level", "info", "log level: debug, info or warn")
	fs.StringVar(&c.logFormat, "log-format", "console", "log format: console or json")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	for _, o := range strings.Split(origins, ",") {
		if o = strings.TrimSpace(o); o != "" {
			c.app.AllowedOrigins = append(c.app.AllowedOrigins, o)
		}
	}
	return c, nil
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
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }() // owned by run, which receives from served

	log.Info("listening",
		zap.String("addr", ln.Addr().String()),
		zap.String("url", "http://"+displayAddr(ln.Addr())),
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
	// http.Server.Shutdown stops new requests but does not see hijacked
	// connections; a.Shutdown closes the sockets with 1001 and waits.
	err = errors.Join(srv.Shutdown(sctx), a.Shutdown(sctx))
	if serr := <-served; !errors.Is(serr, http.ErrServerClosed) {
		err = errors.Join(err, serr)
	}
	if err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	log.Info("stopped")
	return nil
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
