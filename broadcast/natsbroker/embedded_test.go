package natsbroker_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/chiws/chiws/broadcast/internal/fleettest"
	"github.com/chiws/chiws/broadcast/natsbroker"
	"github.com/chiws/chiws/internal/wstest"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

// pairWith starts server A, then server B with a route to A, with the
// options given; A logs to the returned observer.
func pairWith(t *testing.T, oa, ob natsbroker.EmbeddedOptions) (a, b *natsbroker.Embedded, logs *observer.ObservedLogs) {
	t.Helper()
	core, logs := observer.New(zap.WarnLevel)
	oa.Name, oa.ClusterAddr, oa.Logger = "A", "127.0.0.1:0", zap.New(core)
	a = startServer(t, oa)
	ob.Name, ob.ClusterAddr = "B", "127.0.0.1:0"
	ob.Routes = []string{a.ClusterURL()}
	b = startServer(t, ob)
	return a, b, logs
}

// waitLog waits until A logged a message containing snippet.
func waitLog(t *testing.T, logs *observer.ObservedLogs, snippet string) {
	t.Helper()
	wstest.WaitFor(t, fleettest.Timeout, "a log containing "+snippet, func() bool {
		return logs.FilterMessageSnippet(snippet).Len() > 0
	})
}

// brokersMeet connects a broker to each server and checks that they see
// each other and that a message crosses the route.
func brokersMeet(t *testing.T, ea, eb *natsbroker.Embedded) {
	t.Helper()
	a := connectTo(t, ea, fast("alpha"))
	b := connectTo(t, eb, fast("beta"))
	waitHealth(t, a, "alpha sees beta", seesUp(b))
	waitHealth(t, b, "beta sees alpha", seesUp(a))
	expectDelivery(t, a, b, "across")
}

// TestRouteAuth: servers with the same route user and password form a
// cluster; a server with the wrong password is refused (A logs it) and
// joins nothing.
func TestRouteAuth(t *testing.T) {
	t.Run("right", func(t *testing.T) {
		o := natsbroker.EmbeddedOptions{RouteUser: "route", RoutePassword: "s3cret"}
		a, b, _ := pairWith(t, o, o)
		waitRoutes(t, 1, a, b)
		brokersMeet(t, a, b)
	})
	t.Run("wrong", func(t *testing.T) {
		a, b, logs := pairWith(t,
			natsbroker.EmbeddedOptions{RouteUser: "route", RoutePassword: "s3cret"},
			natsbroker.EmbeddedOptions{RouteUser: "route", RoutePassword: "guess"})
		waitLog(t, logs, "authentication error")
		if a.Server().NumRemotes() != 0 || b.Server().NumRemotes() != 0 {
			t.Fatalf("a route formed with a wrong password: %d and %d remotes", a.Server().NumRemotes(), b.Server().NumRemotes())
		}
		// B tried again and was refused again: still no route.
		n := logs.FilterMessageSnippet("authentication error").Len()
		wstest.WaitFor(t, fleettest.Timeout, "a second refusal", func() bool {
			return logs.FilterMessageSnippet("authentication error").Len() > n
		})
		if a.Server().NumRemotes() != 0 {
			t.Fatal("a route formed with a wrong password")
		}
	})
}

// TestRouteTLS: servers with RouteTLS (certificates of a test CA, valid
// for 127.0.0.1, verified both ways) form a cluster; a server whose
// certificate another CA signed is refused.
func TestRouteTLS(t *testing.T) {
	ca, caKey := newCA(t, "test CA")
	good := routeTLS(t, ca, caKey)
	t.Run("same CA", func(t *testing.T) {
		o := natsbroker.EmbeddedOptions{RouteTLS: good}
		a, b, _ := pairWith(t, o, o)
		waitRoutes(t, 1, a, b)
		brokersMeet(t, a, b)
	})
	t.Run("other CA", func(t *testing.T) {
		other, otherKey := newCA(t, "other CA")
		a, b, logs := pairWith(t,
			natsbroker.EmbeddedOptions{RouteTLS: good},
			natsbroker.EmbeddedOptions{RouteTLS: routeTLS(t, other, otherKey)})
		waitLog(t, logs, "TLS route handshake error")
		t.Log(logs.FilterMessageSnippet("TLS route handshake error").All()[0].Message)
		if a.Server().NumRemotes() != 0 || b.Server().NumRemotes() != 0 {
			t.Fatal("a route formed with a certificate of another CA")
		}
	})
}

// newCA returns a self-signed CA certificate and its key.
func newCA(t *testing.T, name string) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return ca, key
}

// routeTLS returns a route TLS configuration: a certificate that ca
// signed for 127.0.0.1, for both ends of a route, verified both ways.
func routeTLS(t *testing.T, ca *x509.Certificate, caKey *ecdsa.PrivateKey) *tls.Config {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "route"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	return &tls.Config{
		Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}},
		RootCAs:      pool,
		ClientCAs:    pool,
		ClientAuth:   tls.RequireAndVerifyClientCert,
		MinVersion:   tls.VersionTLS12,
	}
}

// TestRoutePing: with RoutePingInterval and RouteMaxPingsOut short, a
// route whose traffic stops is closed by both servers within a few
// intervals (with nats-server's defaults: 60 to 90 seconds), and
// re-established when traffic flows again; the brokers, which reported
// each other down, see each other up and messages cross again.
func TestRoutePing(t *testing.T) {
	const ping = 200 * time.Millisecond
	oa := natsbroker.EmbeddedOptions{Name: "A", ClusterAddr: "127.0.0.1:0", RoutePingInterval: ping, RouteMaxPingsOut: 2}
	ea := startServer(t, oa)
	px := newProxy(t, strings.TrimPrefix(ea.ClusterURL(), "nats://"))
	ob := oa
	ob.Name, ob.Routes = "B", []string{natsURL(px)}
	eb := startServer(t, ob)
	waitRoutes(t, 1, ea, eb)
	a := connectTo(t, ea, fast("alpha"))
	b := connectTo(t, eb, fast("beta"))
	waitHealth(t, a, "alpha sees beta", seesUp(b))
	waitHealth(t, b, "beta sees alpha", seesUp(a))

	cut := time.Now()
	px.Pause(wstest.Both)
	waitRoutes(t, 0, ea, eb)
	t.Logf("stale route closed after %v (ping %v, %d pings out)", time.Since(cut).Round(time.Millisecond), ping, oa.RouteMaxPingsOut)
	waitHealth(t, a, "alpha reports beta down", seesDown(b))
	waitHealth(t, b, "beta reports alpha down", seesDown(a))

	healed := time.Now()
	px.Resume(wstest.Both)
	waitRoutes(t, 1, ea, eb)
	waitHealth(t, a, "alpha sees beta again", seesUp(b))
	waitHealth(t, b, "beta sees alpha again", seesUp(a))
	t.Logf("route and peers back %v after the heal", time.Since(healed).Round(time.Millisecond))
	expectDelivery(t, a, b, "after.reconnect")
}
