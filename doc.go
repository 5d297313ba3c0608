// Package chiws brings ASP.NET Core's WebSockets middleware model
// (UseWebSockets) to chi and net/http, on top of github.com/coder/websocket.
//
// One middleware, mounted before the routes, recognises upgrade requests,
// enforces an origin policy, keeps sockets alive and detects dead peers,
// holds each socket's lifecycle to its handler, logs every decision through
// zap, and drains every socket on shutdown.
//
// # Mounting
//
// Create the middleware once and mount it before the routes that accept
// sockets:
//
//	ws := chiws.New(chiws.Options{AllowedOrigins: []string{"https://app.example.com"}})
//	r := chi.NewRouter()
//	r.Use(ws.Handler)
//	r.Get("/ws", func(w http.ResponseWriter, r *http.Request) {
//		if !chiws.IsWebSocketRequest(r) {
//			http.Error(w, "WebSocket only", http.StatusBadRequest)
//			return
//		}
//		c, err := chiws.Accept(w, r, nil)
//		if err != nil {
//			return // Accept has answered the request
//		}
//		defer c.CloseNow()
//		// read and write with c until an error
//	})
//
// Ordinary requests pass through without an allocation. A request that asks
// for a WebSocket upgrade but breaks RFC 6455 is answered by the middleware
// (405, 400 or 426) and never reaches a route handler. Accept without the
// middleware fails with ErrMiddlewareMissing.
//
// # Origins
//
// Browsers apply no CORS to WebSockets: any page can open a socket to any
// server, with the user's cookies. The middleware checks the Origin header
// of every upgrade request against Options.AllowedOrigins (or
// Options.AllowOriginFunc) and answers 403 before any handler runs. The
// default, an empty list, allows the same origin only: stricter than
// ASP.NET Core, which allows every origin by default. Requests without an
// Origin header come from non-browser clients and are allowed; Origin
// protects browser users, it does not authenticate.
//
// # Keep-alive
//
// A socket that was quiet for Options.KeepAliveInterval (two minutes by
// default: nothing read from the peer, or nothing written to it) is
// pinged; a peer that sends nothing back, neither the pong nor a message,
// within Options.KeepAliveTimeout (30 s by default) is gone, and the
// socket is aborted and logged. Busy sockets are not pinged. Each socket
// costs one runtime timer, and a goroutine only while a ping waits for its
// pong. coder/websocket only sees pongs while someone reads the socket, so
// a handler must keep reading: Read or Reader in a loop, or CloseRead for
// a socket the server only writes to.
//
// # Lifecycle
//
// A socket belongs to the handler that accepted it until the handler
// returns. To hand the socket to another goroutine (a hub, a background
// service), call Conn.Wait: it returns when the socket is closed. This is
// the Go form of ASP.NET Core's TaskCompletionSource pattern. A handler that
// returns with its socket open is a bug: the middleware closes the socket
// with 1011 Internal Error and logs a warning naming the route. A panic
// after Accept closes the socket with 1011 and is logged at Error level;
// the server keeps running. Conn.Context carries the request's values
// without its deadline, so chi's Timeout middleware does not cut sockets.
//
// # Shutdown
//
// http.Server.Shutdown neither closes nor waits for hijacked HTTP/1.1
// connections, and it waits for HTTP/2 streams, WebSockets included.
// Middleware.Shutdown closes every socket with 1001 Going Away, refuses new
// ones with 503, and waits for the handlers to return, within its
// context's deadline. Start it with the server's shutdown:
//
//	drained := make(chan error, 1)
//	srv.RegisterOnShutdown(func() { drained <- ws.Shutdown(ctx) })
//	err := errors.Join(srv.Shutdown(ctx), <-drained)
//
// # HTTP/2
//
// Browsers open WebSockets over an HTTP/2 connection with an extended
// CONNECT (RFC 8441) when the server offers it. net/http's HTTP/2 server
// does when the process starts with GODEBUG=http2xconnect=1; the
// middleware then accepts those requests as it accepts HTTP/1.1 upgrades,
// and routes registered for GET receive them. See docs/http2.md.
package chiws
