package broadcast

import (
	"errors"
	"fmt"
)

// Sentinel errors. Each is wrapped with a short context ("broadcast:
// publish: ..."), so compare with errors.Is.
var (
	// ErrBrokerUnavailable means the broker cannot reach its server right
	// now. Publish returns it at once rather than buffering; the broker
	// reconnects by itself.
	ErrBrokerUnavailable = errors.New("broker unavailable")

	// ErrBrokerClosed means Close was called on the broker.
	ErrBrokerClosed = errors.New("broker closed")

	// ErrHubClosed means Shutdown was called on the hub. The members'
	// sockets that Shutdown closed with 1001 have chiws.ErrShuttingDown as
	// their cause, as the middleware's Shutdown gives.
	ErrHubClosed = errors.New("hub shut down")

	// ErrTooSlow is the cause of a member's socket closed with 1008 "too
	// slow" because its queue went over Options.QueueMessages or
	// QueueBytes: context.Cause(c.Context()) matches it and
	// chiws.ErrClosedByServer.
	ErrTooSlow = errors.New("member too slow")

	// ErrWriteTimeout is the cause of a member's socket aborted (no close
	// frame, 1006 in the close log) because one write took longer than
	// Options.WriteTimeout: its client stopped reading.
	// context.Cause(c.Context()) matches it and chiws.ErrClosedByServer.
	ErrWriteTimeout = errors.New("member write timed out")

	// ErrForbidden means Options.Authorize refused a member a topic: Join
	// and Subscribe fail with a *ForbiddenError, which matches it.
	ErrForbidden = errors.New("topic forbidden")

	// ErrMemberLeft means the member has left the hub: its socket closed,
	// or it was dropped for being too slow.
	ErrMemberLeft = errors.New("member has left")

	// ErrInvalidTopic means a topic is empty, too long, or holds a byte
	// outside printable ASCII, a space, '*' or '>', or an empty
	// dot-separated token. See ValidateTopic.
	ErrInvalidTopic = errors.New("invalid topic")

	// ErrInvalidMessage means a message type other than text or binary,
	// or a text message that is not valid UTF-8.
	ErrInvalidMessage = errors.New("invalid message")

	// ErrMessageTooBig means a message larger than Options.MaxMessageBytes.
	ErrMessageTooBig = errors.New("message too big")
)

// ForbiddenError is Options.Authorize's refusal of Topic to a member:
// errors.Is matches ErrForbidden and Err, errors.As finds the topic.
type ForbiddenError struct {
	Topic string
	Err   error // Authorize's
}

func (e *ForbiddenError) Error() string {
	return fmt.Sprintf("%v: %q: %v", ErrForbidden, e.Topic, e.Err)
}

// Unwrap returns ErrForbidden and Authorize's error.
func (e *ForbiddenError) Unwrap() []error { return []error{ErrForbidden, e.Err} }
