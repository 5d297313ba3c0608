package natsbroker

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"go.uber.org/zap"
)

// DefaultClusterName names the cluster that embedded servers form.
const DefaultClusterName = "chiws"

// EmbeddedOptions configures an embedded NATS server.
type EmbeddedOptions struct {
	// Name is the server's name, unique in its cluster. Empty: one is
	// generated.
	Name string

	// ClusterName is the name every server of the cluster shares. Empty
	// means DefaultClusterName.
	ClusterName string

	// ClusterAddr, when set ("host:port"), makes the server listen for
	// routes from the embedded servers of other instances. Port 0 picks a
	// free port (see ClusterURL). Empty: the server forms no cluster.
	ClusterAddr string

	// Routes are the nats://host:port route URLs of other instances'
	// embedded servers. One is enough: servers tell each other about the
	// rest. Routes require ClusterAddr.
	Routes []string

	// ClientAddr, when set ("host:port"), makes the server accept NATS
	// clients there too. Empty: the process connects in-process
	// (Connect), and a server alone opens no port at all; one in a
	// cluster listens on a random loopback port, because nats-server
	// starts its routes only once a client listener is up.
	ClientAddr string

	// StartTimeout bounds the server's start. Zero means ten seconds.
	StartTimeout time.Duration

	// RoutePingInterval is how often the server pings each route. A route
	// with more than RouteMaxPingsOut pings unanswered is closed as stale,
	// and the server that solicited it connects again; meanwhile the
	// messages sent into it are lost, which the brokers' Health reports
	// (peer parts). Zero means nats-server's default, 2 minutes, which it
	// caps at 30 seconds for routes, as it caps any longer value: a dead
	// route is then closed after 60 to 90 seconds. Requires ClusterAddr.
	RoutePingInterval time.Duration

	// RouteMaxPingsOut is how many route pings may be unanswered before
	// the route is closed. Zero means nats-server's default, 2. Requires
	// ClusterAddr.
	RouteMaxPingsOut int

	// RouteUser and RoutePassword, when set, are required from the
	// servers that connect a route to this one, and sent to those in
	// Routes (unless a route URL has credentials of its own) and to those
	// learned from them. Every server of the cluster needs the same pair.
	// nats-server authenticates routes by user and password (or TLS
	// certificates, see RouteTLS), not by token. Requires ClusterAddr.
	RouteUser     string
	RoutePassword string

	// RouteTLS, when not nil, makes every route use TLS with this
	// configuration, both to accept routes and to connect them: it needs
	// a certificate (Certificates or GetCertificate), RootCAs to verify
	// the other servers, and, to verify the servers that connect to this
	// one, ClientCAs with ClientAuth tls.RequireAndVerifyClientCert. A
	// server's certificate must be valid for the host of the route URLs
	// other servers use to reach it. Every server of the cluster needs
	// TLS. It is cloned. Requires ClusterAddr.
	RouteTLS *tls.Config

	// Logger receives the server's notices (Info), warnings and errors
	// (Warn and Error): routes that fail to connect or to authenticate,
	// stale routes. nats-server logs as it sees fit, which may be once per
	// attempt of a route it retries every second; the brokers' Health is
	// what reports once per change. Nil means no logs.
	Logger *zap.Logger
}

// Embedded is a NATS server running in this process.
type Embedded struct {
	srv *server.Server
}

// StartEmbedded starts a NATS server in the process. Shutdown stops it.
// Its goroutines are nats-server's own, owned by the returned Embedded.
func StartEmbedded(opts EmbeddedOptions) (*Embedded, error) {
	o := &server.Options{
		ServerName: opts.Name,
		NoSigs:     true,
		NoLog:      true,
		DontListen: opts.ClientAddr == "" && opts.ClusterAddr == "",
	}
	if opts.ClientAddr == "" && opts.ClusterAddr != "" {
		o.Host, o.Port = "127.0.0.1", server.RANDOM_PORT
	}
	if opts.ClientAddr != "" {
		host, port, err := splitAddr(opts.ClientAddr)
		if err != nil {
			return nil, fmt.Errorf("natsbroker: ClientAddr: %w", err)
		}
		o.Host, o.Port = host, port
	}
	if opts.ClusterAddr != "" {
		host, port, err := splitAddr(opts.ClusterAddr)
		if err != nil {
			return nil, fmt.Errorf("natsbroker: ClusterAddr: %w", err)
		}
		o.Cluster = server.ClusterOpts{Name: opts.ClusterName, Host: host, Port: port}
		if o.Cluster.Name == "" {
			o.Cluster.Name = DefaultClusterName
		}
		if err := opts.setRouteOptions(&o.Cluster); err != nil {
			return nil, err
		}
	} else if len(opts.Routes) > 0 {
		return nil, errors.New("natsbroker: Routes need a ClusterAddr to listen for routes")
	} else if opts.routeOptionsSet() {
		return nil, errors.New("natsbroker: RoutePingInterval, RouteMaxPingsOut, RouteUser, RoutePassword and RouteTLS apply to routes, which need a ClusterAddr")
	}
	for _, r := range opts.Routes {
		u, err := url.Parse(r)
		if err != nil || u.Scheme != "nats" || u.Host == "" {
			return nil, fmt.Errorf("natsbroker: route %q: want nats://host:port", redact(r))
		}
		if u.User == nil && opts.RouteUser != "" {
			u.User = url.UserPassword(opts.RouteUser, opts.RoutePassword)
		}
		o.Routes = append(o.Routes, u)
	}
	timeout := opts.StartTimeout
	if timeout == 0 {
		timeout = 10 * time.Second
	}
	srv, err := server.NewServer(o)
	if err != nil {
		return nil, fmt.Errorf("natsbroker: embedded server: %w", err)
	}
	if opts.Logger != nil {
		srv.SetLogger(serverLogger{opts.Logger.Sugar()}, false, false)
	}
	srv.Start()
	if !srv.ReadyForConnections(timeout) {
		srv.Shutdown()
		srv.WaitForShutdown()
		return nil, fmt.Errorf("natsbroker: embedded server not ready within %v", timeout)
	}
	return &Embedded{srv: srv}, nil
}

func (opts *EmbeddedOptions) routeOptionsSet() bool {
	return opts.RoutePingInterval != 0 || opts.RouteMaxPingsOut != 0 || opts.RouteUser != "" ||
		opts.RoutePassword != "" || opts.RouteTLS != nil
}

// setRouteOptions validates the route options and sets them in c.
func (opts *EmbeddedOptions) setRouteOptions(c *server.ClusterOpts) error {
	switch {
	case opts.RoutePingInterval < 0:
		return fmt.Errorf("natsbroker: RoutePingInterval must not be negative, got %v", opts.RoutePingInterval)
	case opts.RouteMaxPingsOut < 0:
		return fmt.Errorf("natsbroker: RouteMaxPingsOut must not be negative, got %d", opts.RouteMaxPingsOut)
	case (opts.RouteUser == "") != (opts.RoutePassword == ""):
		return errors.New("natsbroker: RouteUser and RoutePassword go together: set both or neither")
	case opts.RouteTLS != nil && len(opts.RouteTLS.Certificates) == 0 && opts.RouteTLS.GetCertificate == nil:
		return errors.New("natsbroker: RouteTLS needs a certificate (Certificates or GetCertificate): every server both accepts and connects routes")
	}
	c.PingInterval = opts.RoutePingInterval
	c.MaxPingsOut = opts.RouteMaxPingsOut
	c.Username, c.Password = opts.RouteUser, opts.RoutePassword
	if opts.RouteTLS != nil {
		c.TLSConfig = opts.RouteTLS.Clone()
	}
	return nil
}

// redact hides the password of a route URL in errors.
func redact(r string) string {
	if u, err := url.Parse(r); err == nil {
		return u.Redacted()
	}
	return "(unparsable URL)"
}

// splitAddr splits host:port; port 0 becomes nats-server's random port.
func splitAddr(addr string) (string, int, error) {
	host, p, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, err
	}
	port, err := strconv.Atoi(p)
	if err != nil || port < 0 || port > 65535 {
		return "", 0, fmt.Errorf("bad port in %q", addr)
	}
	if port == 0 {
		port = server.RANDOM_PORT
	}
	return host, port, nil
}

// Server returns the nats-server instance.
func (e *Embedded) Server() *server.Server { return e.srv }

// ClusterURL returns the nats://host:port URL other instances use as a
// route to this server, or "" without ClusterAddr.
func (e *Embedded) ClusterURL() string {
	a := e.srv.ClusterAddr()
	if a == nil {
		return ""
	}
	return "nats://" + a.String()
}

// ClientURL returns the URL of the client listener, or "" without
// ClientAddr.
func (e *Embedded) ClientURL() string {
	if e.srv.Addr() == nil {
		return ""
	}
	return e.srv.ClientURL()
}

// Connect returns a broker connected to this server in-process, without
// a socket. Close the broker before Shutdown.
func (e *Embedded) Connect(opts Options) (*Broker, error) {
	opts.NATS = append(append([]nats.Option(nil), opts.NATS...), nats.InProcessServer(e.srv))
	return Connect("", opts)
}

// Shutdown stops the server and waits until it has.
func (e *Embedded) Shutdown() {
	e.srv.Shutdown()
	e.srv.WaitForShutdown()
}

// serverLogger passes nats-server's logs to zap. Fatalf is logged at
// Error: the embedded server never exits the process.
type serverLogger struct{ l *zap.SugaredLogger }

func (s serverLogger) Noticef(format string, v ...any) { s.l.Infof(format, v...) }
func (s serverLogger) Warnf(format string, v ...any)   { s.l.Warnf(format, v...) }
func (s serverLogger) Fatalf(format string, v ...any)  { s.l.Errorf(format, v...) }
func (s serverLogger) Errorf(format string, v ...any)  { s.l.Errorf(format, v...) }
func (s serverLogger) Debugf(format string, v ...any)  { s.l.Debugf(format, v...) }
func (s serverLogger) Tracef(format string, v ...any)  { s.l.Debugf(format, v...) }
