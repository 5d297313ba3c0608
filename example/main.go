// Command example runs the chiws echo application: the page and endpoints of
// ASP.NET Core's WebSockets sample, on chi and chiws.
//
//	go run ./example                     # http://localhost:5000
//	go run ./example -addr :8080 -log-level debug
//	GODEBUG=http2xconnect=1 go run ./example -tls   # https://localhost:5000, WebSockets over HTTP/2
//
// Endpoints: / (echo page), /ws (echo), /broadcast (a room where every
// message goes to every member). The room is in memory by default; with
// -nats-cluster and -nats-routes, instances run embedded NATS servers
// joined by routes and share the room; -nats-url uses an operated NATS
// and -redis a Redis instead:
//
//	go run ./example -addr localhost:5000 -nats-cluster localhost:6222
//	go run ./example -addr localhost:5001 -nats-cluster localhost:6223 -nats-routes nats://localhost:6222
//
// SIGINT or SIGTERM stops the server gracefully: every socket receives 1001
// Going Away and the process exits 0.
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
	"github.com/chiws/chiws/broadcast"
	"github.com/chiws/chiws/broadcast/natsbroker"
	"github.com/chiws/chiws/broadcast/redisbroker"
	"github.com/chiws/chiws/example/app"
	"github.com/coder/websocket"
	"github.com/redis/go-redis/v9"
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

	// The broadcast room's broker: at most one of natsURL, redisAddr and
	// the embedded server (natsCluster, natsRoutes).
	natsCluster string
	natsRoutes  []string
	natsURL     string
	redisAddr   string

	// The embedded cluster's routes, and this instance's name in the
	// others' broker health.
	natsName                    string
	natsRoutePing               time.Duration
	natsRouteUser               string
	natsRouteCert, natsRouteKey string
	natsRouteCA                 string
}

// routePasswordEnv holds the embedded cluster's route password: a flag
// would show it in the process list.
const routePasswordEnv = "NATS_ROUTE_PASSWORD"

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
	var routes string
	fs.StringVar(&c.natsCluster, "nats-cluster", "",
		"run an embedded NATS server for /broadcast that listens for routes from other instances on this host:port")
	fs.StringVar(&routes, "nats-routes", "",
		"comma-separated nats://host:port routes to other instances' embedded NATS servers (needs -nats-cluster)")
	fs.StringVar(&c.natsURL, "nats-url", "", "use this external NATS (nats://host:port, comma-separated for a cluster) for /broadcast")
	fs.StringVar(&c.redisAddr, "redis", "", "use Redis pub/sub at this host:port (or redis:// URL) for /broadcast")
	host, _ := os.Hostname()
	fs.StringVar(&c.natsName, "nats-name", host, "this instance's name in the other instances' NATS broker health")
	fs.DurationVar(&c.natsRoutePing, "nats-route-ping", 0,
		"how often the embedded server pings its routes (0: nats-server's default, 30s for routes)")
	fs.StringVar(&c.natsRouteUser, "nats-route-user", "",
		"user the embedded servers require of each other's routes; the password is read from $"+routePasswordEnv)
	fs.StringVar(&c.natsRouteCert, "nats-route-tls-cert", "", "certificate file (PEM) for TLS between the embedded servers")
	fs.StringVar(&c.natsRouteKey, "nats-route-tls-key", "", "private key file (PEM) for -nats-route-tls-cert")
	fs.StringVar(&c.natsRouteCA, "nats-route-tls-ca", "", "CA file (PEM) that signs every embedded server's route certificate")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	c.natsRoutes = splitList(routes)
	brokers := 0
	for _, set := range []bool{c.natsCluster != "", c.natsURL != "", c.redisAddr != ""} {
		if set {
			brokers++
		}
	}
	switch {
	case brokers > 1:
		return c, errors.New("choose one of -nats-cluster, -nats-url and -redis")
	case len(c.natsRoutes) > 0 && c.natsCluster == "":
		return c, errors.New("-nats-routes needs -nats-cluster")
	case (c.natsRouteUser != "" || c.natsRouteCert != "" || c.natsRoutePing != 0) && c.natsCluster == "":
		return c, errors.New("-nats-route-* flags need -nats-cluster")
	case (c.natsRouteCert == "") != (c.natsRouteKey == "") || (c.natsRouteCert == "") != (c.natsRouteCA == ""):
		return c, errors.New("-nats-route-tls-cert, -nats-route-tls-key and -nats-route-tls-ca go together")
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

	b, closeBroker, err := newBroker(cfg, log.Named("broker"))
	if err != nil {
		return err
	}
	defer closeBroker()
	cfg.app.Broker = b

	a, err := app.New(cfg.app)
	if err != nil {
		return fmt.Errorf("invalid configuration: %w", err)
	}
	ln, err := net.Listen("tcp", cfg.addr)
	if err != nil {
		_ = a.Shutdown(context.Background())
		return err
	}
	srv := newServer(a.Handler, log.Named("http"))
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

// newServer returns the example's server, configured as docs/http2.md
// recommends. ReadHeaderTimeout and IdleTimeout bound the connections that
// carry no socket: a hijacked HTTP/1.1 connection is no longer the
// server's, and an HTTP/2 connection with a stream open is not idle. The
// HTTP/2 receive windows keep a client that floods one socket whose
// handler does not read from stalling the other sockets of its connection:
// with net/http's defaults (1 MiB for the stream and for the connection),
// one such socket takes the whole connection window until it closes,
// which for a handler that stopped reading is when the keep-alive gives
// up on it: minutes, by default.
func newServer(h http.Handler, log *zap.Logger) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		HTTP2: &http.HTTP2Config{
			// A socket's unread messages hold at most this much of the
			// connection's window.
			MaxReceiveBufferPerStream: 64 << 10,
			// The largest connection window net/http allows (under 4 MiB):
			// about 64 stalled sockets before the connection is.
			MaxReceiveBufferPerConnection: 4<<20 - 1,
		},
		ErrorLog: zap.NewStdLog(log),
	}
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

// newBroker returns the broadcast room's broker from the flags, and a
// function that closes it and what it runs. A nil broker means the
// application's in-memory one.
func newBroker(cfg config, log *zap.Logger) (broadcast.Broker, func(), error) {
	nop := func() {}
	switch {
	case cfg.natsCluster != "":
		opts := natsbroker.EmbeddedOptions{
			ClusterAddr:       cfg.natsCluster,
			Routes:            cfg.natsRoutes,
			RoutePingInterval: cfg.natsRoutePing,
			RouteUser:         cfg.natsRouteUser,
			Logger:            log.Named("nats"),
		}
		if opts.RouteUser != "" {
			if opts.RoutePassword = os.Getenv(routePasswordEnv); opts.RoutePassword == "" {
				return nil, nop, fmt.Errorf("-nats-route-user needs the password in $%s", routePasswordEnv)
			}
		}
		if cfg.natsRouteCert != "" {
			tc, err := routeTLS(cfg.natsRouteCert, cfg.natsRouteKey, cfg.natsRouteCA)
			if err != nil {
				return nil, nop, err
			}
			opts.RouteTLS = tc
		}
		e, err := natsbroker.StartEmbedded(opts)
		if err != nil {
			return nil, nop, err
		}
		b, err := e.Connect(natsbroker.Options{Name: cfg.natsName, Logger: log})
		if err != nil {
			e.Shutdown()
			return nil, nop, err
		}
		log.Info("broadcast on embedded NATS", zap.String("routesFrom", e.ClusterURL()), zap.Strings("routes", cfg.natsRoutes))
		return b, func() { _ = b.Close(); e.Shutdown() }, nil
	case cfg.natsURL != "":
		b, err := natsbroker.Connect(cfg.natsURL, natsbroker.Options{Name: cfg.natsName, Logger: log})
		if err != nil {
			return nil, nop, err
		}
		log.Info("broadcast on NATS", zap.String("url", cfg.natsURL))
		return b, func() { _ = b.Close() }, nil
	case cfg.redisAddr != "":
		url := cfg.redisAddr
		if !strings.Contains(url, "://") {
			url = "redis://" + url
		}
		// No retries (a retried PUBLISH may be delivered twice, out of
		// order) and short timeouts, which bound how long an outage
		// goes unnoticed.
		o, err := redisbroker.ClientOptions(url)
		if err != nil {
			return nil, nop, fmt.Errorf("-redis: %w", err)
		}
		c := redis.NewClient(o)
		// A Redis that is down is not fatal: the broker reports it
		// (Health), and the room works once Redis is back.
		b, err := redisbroker.New(c, redisbroker.Options{Logger: log})
		if err != nil {
			_ = c.Close()
			return nil, nop, err
		}
		log.Info("broadcast on Redis", zap.String("addr", o.Addr), zap.Bool("up", b.Health().Up))
		return b, func() { _ = b.Close(); _ = c.Close() }, nil
	}
	return nil, nop, nil
}
