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

	// ErrOriginNotAllowed means the request's Origin header is not allowed
	// by the origin policy. The middleware answers with 403 Forbidden before
	// any route handler runs.
	ErrOriginNotAllowed = errors.New("origin not allowed")

	// ErrShuttingDown means Shutdown has been called: no new socket is
	// accepted. The answer is 503 Service Unavailable.
	ErrShuttingDown = errors.New("shutting down")

	// ErrAlreadyAccepted means Accept was called twice for one request.
	ErrAlreadyAccepted = errors.New("the request was already accepted")
)
