package natsbroker

// WithPendingLimits returns o with Subscribe's pending limits set to msgs
// messages and bytes bytes, so that a test makes a slow consumer with a few
// messages.
func WithPendingLimits(o Options, msgs, bytes int) Options {
	o.pendingMsgs, o.pendingBytes = msgs, bytes
	return o
}
