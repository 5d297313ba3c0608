// Package chiws brings ASP.NET Core's WebSockets middleware (UseWebSockets)
// to chi and net/http, on top of github.com/coder/websocket.
//
// # Mounting
//
// Create the middleware once with New and mount its Handler before the
// routes that call Accept, which fails with ErrMiddlewareMissing without it:
//
//	ws := chiws.New(chiws.Options{AllowedOrigins: []string{"https://app.example.com"}})
//	r := chi.NewRouter()
//	r.Use(ws.Handler)
//	r.Get("/ws", func(w http.ResponseWriter, r *http.Request) {
//		c, err := chiws.Accept(w, r, nil)
//		if err != nil {
//			return // Accept has answered the request
//		}
//		defer c.CloseNow()
//		// read and write with c until an error
//	})
//
// # Origins
//
// Browsers apply no CORS to WebSockets: the middleware answers 403 to an
// Origin outside Options.AllowedOrigins (by default, the same origin only).
//
// # Keep-alive
//
// Quiet sockets are pinged every Options.KeepAliveInterval and aborted when
// the peer answers nothing within Options.KeepAliveTimeout. Pongs are seen
// only while the handler reads (Read or Reader in a loop, or CloseRead).
//
// # Lifecycle
//
// A socket belongs to the handler that accepted it: one left open when the
// handler returns or panics is closed with 1011. To hand it to another
// goroutine, block in Conn.Wait. Conn.Context drops the request's deadline.
//
// # Shutdown
//
// http.Server.Shutdown does not drain WebSockets: run Middleware.Shutdown
// with it.
//
// # HTTP/2
//
// With GODEBUG=http2xconnect=1, extended CONNECT requests (RFC 8441) are
// accepted like HTTP/1.1 upgrades, on GET routes; see docs/http2.md.
package chiws
