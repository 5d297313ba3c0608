package bench

import (
	"context"
	"net/http/httptest"
	"testing"
	"time"
)

// startServer serves candidate and its control endpoint on loopback.
func startServer(t *testing.T, candidate string, keepAlive time.Duration) *Client {
	t.Helper()
	s, err := NewServer(ServerConfig{Candidate: candidate, KeepAlive: keepAlive})
	if err != nil {
		t.Fatal(err)
	}
	ws := httptest.NewServer(s)
	ctl := httptest.NewServer(StatsHandler(s))
	c := NewClient(ws.Listener.Addr().String(), ctl.Listener.Addr().String(), 2)
	t.Cleanup(func() {
		c.Close()
		ctl.Close()
		ws.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = s.Shutdown(ctx)
	})
	return c
}

// TestClientModes runs every client mode against every candidate with
// tiny counts: the harness's network code works and is race-free.
func TestClientModes(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for _, candidate := range Candidates {
		t.Run(candidate, func(t *testing.T) {
			c := startServer(t, candidate, 50*time.Millisecond)

			cr, err := c.RunConnect(ctx, 2, 100*time.Millisecond)
			if err != nil || cr.Conns == 0 {
				t.Fatalf("connect: %+v, %v", cr, err)
			}
			er, err := c.RunEcho(ctx, 4, 64, 20*time.Millisecond, 100*time.Millisecond)
			if err != nil || er.Msgs == 0 {
				t.Fatalf("echo: %+v, %v", er, err)
			}
			ir, err := c.RunIdle(ctx, 10, 0, 200*time.Millisecond)
			if err != nil {
				t.Fatalf("idle: %v", err)
			}
			if ir.Loaded.Active != 10 || ir.After.Active != 0 {
				t.Fatalf("idle: active %d with the sockets, %d after", ir.Loaded.Active, ir.After.Active)
			}
			pinged := ir.WindowEnd.PingsSent - ir.WindowStart.PingsSent
			switch candidate {
			case CoderPing, Chiws, GorillaPing:
				if pinged == 0 {
					t.Fatalf("idle: no ping counted in the window")
				}
			default:
				if ir.WindowEnd.PingsSent != 0 {
					t.Fatalf("idle: %d pings counted by a candidate without keep-alive", ir.WindowEnd.PingsSent)
				}
			}
			hr, err := c.RunChurn(ctx, 5, 20, 2)
			if err != nil || hr.Errors != 0 || hr.After.Active != 5 || hr.Final.Active != 0 {
				t.Fatalf("churn: %+v, %v", hr, err)
			}
		})
	}
}

// TestPad checks that the padded handler still reaches the candidate.
func TestPad(t *testing.T) {
	w := NewHijackWriter()
	UpgradeHandlers()[0].Handler.ServeHTTP(w, UpgradeRequest())
	padded := Pad(UpgradeHandlers()[0].Handler, 3)
	w2 := NewHijackWriter()
	padded.ServeHTTP(w2, UpgradeRequest())
	if !w.Upgraded() || !w2.Upgraded() {
		t.Fatal("not upgraded")
	}
}

// TestH2CClient runs the h2c client (RFC 8441 over cleartext HTTP/2)
// against chiws on a server configured by ConfigureH2C: the sockets of a
// source share one TCP connection, and the HTTP/1.1 client still works on
// the same server.
func TestH2CClient(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	s, err := NewServer(ServerConfig{Candidate: Chiws, KeepAlive: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ws := httptest.NewUnstartedServer(s)
	ConfigureH2C(ws.Config)
	ws.Start()
	ctl := httptest.NewServer(StatsHandler(s))
	const sources = 2
	h2 := NewH2CClient(ws.Listener.Addr().String(), ctl.Listener.Addr().String(), sources)
	h1 := NewClient(ws.Listener.Addr().String(), ctl.Listener.Addr().String(), sources)
	t.Cleanup(func() {
		h2.Close()
		h1.Close()
		ctl.Close()
		ws.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = s.Shutdown(ctx)
	})

	cr, err := h2.RunConnect(ctx, 4, 100*time.Millisecond)
	if err != nil || cr.Conns == 0 || cr.Errors != 0 {
		t.Fatalf("h2c connect: %+v, %v", cr, err)
	}
	if cr.TCPDials > sources {
		t.Fatalf("h2c connect: %d sockets over %d TCP connections, want at most %d", cr.Conns, cr.TCPDials, sources)
	}
	er, err := h2.RunEcho(ctx, 8, 128, 20*time.Millisecond, 100*time.Millisecond)
	if err != nil || er.Msgs == 0 {
		t.Fatalf("h2c echo: %+v, %v", er, err)
	}
	if er.TCPDials > sources {
		t.Fatalf("h2c echo: %d sockets over %d new TCP connections, want at most %d", er.Conns, er.TCPDials, sources)
	}
	if _, err := h2.waitActive(0, time.Minute); err != nil {
		t.Fatal(err)
	}
	cr, err = h1.RunConnect(ctx, 2, 100*time.Millisecond)
	if err != nil || cr.Conns == 0 || cr.TCPDials < int64(cr.Conns) {
		t.Fatalf("h1 connect on the h2c server: %+v, %v", cr, err)
	}
}
