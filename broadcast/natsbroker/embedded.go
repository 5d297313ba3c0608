package natsbroker

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
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
	} else if len(opts.Routes) > 0 {
		return nil, errors.New("natsbroker: Routes need a ClusterAddr to listen for routes")
	}
	for _, r := range opts.Routes {
		u, err := url.Parse(r)
		if err != nil || u.Scheme != "nats" || u.Host == "" {
			return nil, fmt.Errorf("natsbroker: route %q: want nats://host:port", r)
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
	srv.Start()
	if !srv.ReadyForConnections(timeout) {
		srv.Shutdown()
		srv.WaitForShutdown()
		return nil, fmt.Errorf("natsbroker: embedded server not ready within %v", timeout)
	}
	return &Embedded{srv: srv}, nil
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
