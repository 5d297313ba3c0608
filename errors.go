package chiws

import "errors"

// Errors returned by Accept and Middleware methods, wrapped with a short
// context ("chiws: accept: ..."): compare with errors.Is.
var (
	// ErrNotWebSocket: not a WebSocket upgrade request; Accept answers 400.
	ErrNotWebSocket = errors.New("not a WebSocket upgrade request")

	// ErrMiddlewareMissing: a valid upgrade request reached Accept without
	// the middleware, which must be mounted before the routes; Accept
	// answers 500.
	ErrMiddlewareMissing = errors.New("the chiws middleware is not mounted: " +
		"call r.Use(m.Handler) (or wrap the handler with m.Handler) " +
		"before the routes that accept WebSockets")

	// ErrHijackBypassed means a ResponseWriter wrapper between the middleware
	// and Accept hijacked around the middleware's writer, hiding the close
	// from chiws; Accept then closes with 1011. Wrappers must Unwrap to that
	// writer or delegate Hijack to it (chi's middleware.WrapResponseWriter does).
	ErrHijackBypassed = errors.New("a ResponseWriter wrapper hijacked the connection " +
		"around the middleware's ResponseWriter")

	// ErrAlreadyAccepted: Accept was called twice for one request.
	ErrAlreadyAccepted = errors.New("the request was already accepted")
)

// Why a socket ended: once it is closed, context.Cause(c.Context())
// matches exactly one of these with errors.Is, and carries the close code
// when one was sent or received (websocket.CloseStatus). The close log's
// closedBy field names the same cause.
var (
	// ErrClosedByPeer: the peer sent a close frame (closedBy "client").
	ErrClosedByPeer = errors.New("closed by the peer")

	// ErrClosedByServer: the application closed the socket (Conn.Close,
	// CloseNow, CloseWith, or a read or write whose context ended), or the
	// server closed it with 1002, 1003, 1007, 1008 or 1009 for a peer that
	// broke the protocol or the read limit (closedBy "server").
	ErrClosedByServer = errors.New("closed by the server")

	// ErrKeepAliveTimeout: a ping went unanswered for KeepAliveTimeout, and
	// the connection was aborted (closedBy "keepalive").
	ErrKeepAliveTimeout = errors.New("keep-alive timeout")

	// ErrShuttingDown: Shutdown closed the socket with 1001 Going Away, or
	// aborted it (1006) at its deadline (closedBy "shutdown"). Accept returns
	// it when Shutdown began meanwhile, having answered 503 or sent 1001.
	ErrShuttingDown = errors.New("shutting down")

	// ErrHandlerReturned: the handler returned with the socket open, closed
	// with 1011 (closedBy "handler-return").
	ErrHandlerReturned = errors.New("handler returned with the socket open")

	// ErrHandlerPanicked: the handler panicked after Accept; closed with
	// 1011, or aborted for http.ErrAbortHandler (closedBy "panic").
	ErrHandlerPanicked = errors.New("handler panicked")

	// ErrConnectionLost: the connection broke without a close frame (the
	// peer vanished or reset it, a read or write timed out, an HTTP/2
	// stream was reset) or was closed through the embedded websocket.Conn,
	// which chiws does not see (closedBy "connection-lost").
	ErrConnectionLost = errors.New("connection lost")
)

// closedBy names a sentinel cause in the close log's closedBy field, or
// reports that by is CloseWith's. It compares with ==, which unlike a map
// lookup cannot panic on a cause whose type is not comparable.
func closedBy(by error) (string, bool) {
	for _, n := range [...]struct {
		err  error
		name string
	}{{ErrClosedByPeer, "client"}, {ErrClosedByServer, "server"}, {ErrKeepAliveTimeout, "keepalive"},
		{ErrShuttingDown, "shutdown"}, {ErrHandlerReturned, "handler-return"},
		{ErrHandlerPanicked, "panic"}, {ErrConnectionLost, "connection-lost"}} {
		if n.err == by {
			return n.name, true
		}
	}
	return "server", false
}
