package chiws

import "errors"

// Sentinel errors returned by Accept and Middleware methods. Each is wrapped
// with a short context ("chiws: accept: ..."), so compare with errors.Is.
var (
	// ErrNotWebSocket means the request is not a WebSocket upgrade request.
	// Accept answers it with 400 Bad Request.
	ErrNotWebSocket = errors.New("not a WebSocket upgrade request")

	// ErrMiddlewareMissing means Accept saw a valid upgrade request that did
	// not pass through the middleware. It is the most common setup mistake:
	// mount the middleware before the routes, for example r.Use(ws.Handler)
	// on a chi router. Accept answers with 500 Internal Server Error.
	ErrMiddlewareMissing = errors.New("the chiws middleware is not mounted: " +
		"call r.Use(m.Handler) (or wrap the handler with m.Handler) " +
		"before the routes that accept WebSockets")

	// ErrHijackBypassed means a ResponseWriter wrapper between the
	// middleware and Accept hijacked the connection without going through
	// the middleware's ResponseWriter, so chiws cannot see the connection
	// close. Accept closes the socket with 1011 and returns this error. Wrappers
	// must reach the middleware's writer through Unwrap or delegate their
	// Hijack to it, as chi's middleware.WrapResponseWriter does.
	ErrHijackBypassed = errors.New("a ResponseWriter wrapper hijacked the connection " +
		"around the middleware's ResponseWriter")

	// ErrAlreadyAccepted means Accept was called twice for one request.
	ErrAlreadyAccepted = errors.New("the request was already accepted")
)

// Why a socket ended: context.Cause(c.Context()) matches exactly one of
// these with errors.Is once the socket is closed, and also carries the
// close code when one was sent or received (websocket.CloseStatus). The
// close log's closedBy field names the same cause.
var (
	// ErrClosedByPeer: the peer sent a close frame (closedBy "client").
	ErrClosedByPeer = errors.New("closed by the peer")

	// ErrClosedByServer: the application closed the socket (Conn.Close,
	// Conn.CloseNow, Conn.CloseWith, or a read or write whose context
	// ended and closed it), or the peer broke the protocol or the read
	// limit and the server closed it with 1002, 1003, 1007, 1008 or 1009
	// (closedBy "server").
	ErrClosedByServer = errors.New("closed by the server")

	// ErrKeepAliveTimeout: the peer answered no keep-alive ping within
	// KeepAliveTimeout and the connection was aborted (closedBy
	// "keepalive").
	ErrKeepAliveTimeout = errors.New("keep-alive timeout")

	// ErrShuttingDown: Shutdown closed the socket with 1001 Going Away
	// (closedBy "shutdown"). Accept also returns it when Shutdown began
	// while the handler ran; the upgrade request is then answered with 503
	// Service Unavailable, or the socket closed with 1001 if already open.
	ErrShuttingDown = errors.New("shutting down")

	// ErrHandlerReturned: the route handler returned with the socket open,
	// and the middleware closed it with 1011 (closedBy "handler-return").
	ErrHandlerReturned = errors.New("handler returned with the socket open")

	// ErrHandlerPanicked: the route handler panicked after Accept, and the
	// middleware closed the socket with 1011 (closedBy "panic").
	ErrHandlerPanicked = errors.New("handler panicked")

	// ErrConnectionLost: the connection broke without a close frame: the
	// peer vanished or reset it, a read or write timed out, an HTTP/2
	// stream was reset, or the connection was closed through the embedded
	// websocket.Conn, which chiws does not see (closedBy
	// "connection-lost").
	ErrConnectionLost = errors.New("connection lost")
)

// closedBy names each cause in the close log's closedBy field.
var closedBy = map[error]string{
	ErrClosedByPeer:     "client",
	ErrClosedByServer:   "server",
	ErrKeepAliveTimeout: "keepalive",
	ErrShuttingDown:     "shutdown",
	ErrHandlerReturned:  "handler-return",
	ErrHandlerPanicked:  "panic",
	ErrConnectionLost:   "connection-lost",
}
