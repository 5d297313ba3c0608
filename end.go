package chiws

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/coder/websocket"
	"go.uber.org/zap"
)

// This file is the end of a socket, all of it (docs/design.md). The cause
// is written once, by decide: whoever closes records before acting, and a
// failed read or write only when the connection is closed. Done fires once
// the connection is closed and no operation through Conn is in progress
// (coder/websocket closes it when it reads the peer's close frame, before
// the read returns the code). Two ways to close: shut and abort.

type closeCause struct { // who decided (a sentinel, CloseWith's cause), the code
	by     error
	code   websocket.StatusCode
	reason string
}

func (e *closeCause) Error() string {
	if e.code == websocket.StatusAbnormalClosure {
		return "chiws: socket " + e.by.Error()
	}
	return fmt.Sprintf("chiws: socket %v: status %d %q", e.by, int(e.code), e.reason)
}

// Unwrap: the cause, ErrClosedByServer for CloseWith's, the CloseError.
func (e *closeCause) Unwrap() []error {
	errs := append(make([]error, 0, 3), e.by)
	if _, ok := closedBy(e.by); !ok {
		errs = append(errs, ErrClosedByServer)
	}
	if e.code != websocket.StatusAbnormalClosure {
		errs = append(errs, websocket.CloseError{Code: e.code, Reason: e.reason})
	}
	return errs
}

// decide records why the socket ends, unless one did; it reports if first.
func (c *Conn) decide(by error, code websocket.StatusCode, reason string) bool {
	c.end.mu.Lock()
	defer c.end.mu.Unlock()
	if c.end.cause.by != nil {
		return false
	}
	c.end.cause = closeCause{by: by, code: code, reason: reason}
	return true
}

func (c *Conn) begin() { // with release, around every read, write and ping
	c.end.mu.Lock()
	c.end.ops++
	c.end.mu.Unlock()
}

// release ends an operation under ctx (or nil) that returned err: it
// records what err proves, finishes the close it calls for, awaits the end.
func (c *Conn) release(ctx context.Context, err error, what string) {
	var ce websocket.CloseError
	var coder closeCause // the close coder/websocket sent for a refused frame
	var then func()
	ends := true
	closed := c.nc.isClosed()
	ctxEnded := ctx != nil && ctx.Err() != nil
	switch {
	case err == nil, err == io.EOF: // io.EOF: the end of a message
		ends = false
	case errors.As(err, &ce): // the peer's close frame: coder/websocket closes
		c.decide(ErrClosedByPeer, ce.Code, ce.Reason)
	case errors.Is(err, websocket.ErrMessageTooBig): // coder/websocket sent 1009, or will
		coder = closeCause{ErrClosedByServer, websocket.StatusMessageTooBig, "message too big"}
	case ctxEnded && (closed || errors.Is(err, net.ErrClosed)):
		// The context ended an I/O, and coder/websocket closes the
		// connection (it marks it closed first: net.ErrClosed).
		c.decide(ErrClosedByServer, websocket.StatusAbnormalClosure, what+" context done")
	case ctxEnded:
		ends = false // the context ended a wait for a lock: still open
	case closed, errors.Is(err, net.ErrClosed):
		// Someone closed it, or is closing it, and recorded why.
	case c.nc.broke.Load(): // EOF, reset, timeout, HTTP/2 disconnect or reset
		then = func() { _ = c.abort(ErrConnectionLost, "") }
	case what == "write":
		ends = false // nothing proven: the socket may be open still
	default:
		// coder/websocket refused a frame: it sent 1002 for most such
		// errors (it gives up if another frame holds the connection for 5
		// s) and nothing for some; Close sends it when it did not.
		coder = closeCause{ErrClosedByServer, websocket.StatusProtocolError, "protocol error"}
	}
	c.end.mu.Lock()
	if coder.by != nil { // shut, or a close that waits for the writer, sends it first
		c.end.coder = coder
		then = func() { _ = c.shut(coder.by, coder.code, coder.reason) }
	}
	switch { // a context that ended, socket open: coder/websocket may still close
	case ctxEnded && !ends:
		c.end.ctxNote = what + " context done"
	case ctx != nil && err == nil && strings.HasPrefix(c.end.ctxNote, what):
		c.end.ctxNote = "" // it did not
	}
	c.end.ops--
	fire := c.end.ops == 0 && c.end.closed && !c.end.ended
	c.end.ended = c.end.ended || fire
	c.end.mu.Unlock()
	if fire {
		c.ending()
	}
	if then != nil {
		then()
	}
	if ends {
		c.awaitEnd()
	}
}

// awaitEnd waits for the end an operation saw under way (bounded: a close
// begun through the embedded Conn ends only with the handler).
func (c *Conn) awaitEnd() {
	t := time.NewTimer(c.m.cfg.closeTimeout)
	defer t.Stop()
	select {
	case <-c.ctx.Done():
	case <-t.C:
	}
}

func (c *Conn) connClosed() { // once, by whoever closed the connection
	c.end.mu.Lock()
	c.end.closed, c.end.at = true, time.Now()
	fire := c.end.ops == 0 && !c.end.ended
	c.end.ended = c.end.ended || fire
	c.end.mu.Unlock()
	if fire {
		c.ending()
	}
}

// ending ends the socket, once (nobody deciding: lost), out of the
// registry before Done fires, so that Stats no longer counts it then.
func (c *Conn) ending() {
	c.end.mu.Lock()
	note := c.end.ctxNote
	c.end.mu.Unlock()
	if note != "" {
		c.decide(ErrClosedByServer, websocket.StatusAbnormalClosure, note)
	}
	c.decide(ErrConnectionLost, websocket.StatusAbnormalClosure, "")
	c.hb.stop()
	registered := c.m.unregister(c)
	c.cancel(&c.end.cause) // never written again: decide refuses
	if registered {
		c.m.goroutines.Done() // last: see Middleware.goroutines
	}
}

// wireClose returns what coder/websocket's Close sends: 1011 for a code
// that may not be sent or a reason over 123 bytes, no payload for 1005.
func wireClose(code websocket.StatusCode, reason string) (websocket.StatusCode, string) {
	switch {
	case code == websocket.StatusNoStatusRcvd:
		return code, ""
	case len(reason) > 123, code < 1000, code > 4999, code >= 1015 && code < 3000,
		code == 1004, code == websocket.StatusAbnormalClosure:
		return websocket.StatusInternalError, ""
	}
	return code, reason
}

// shut is the graceful close: once no frame is being written (fmu) it
// records by (nil: recorded) and sends the close frame; past CloseTimeout
// it aborts (1006 if no frame went out).
func (c *Conn) shut(by error, code websocket.StatusCode, reason string) error {
	code, reason = wireClose(code, reason)
	aborted := make(chan struct{})
	t := time.AfterFunc(c.m.cfg.closeTimeout, func() { // waited for below
		defer close(aborted)
		c.abort(cmp.Or(by, ErrClosedByServer), reason)
	})
	var err error
	select {
	case c.fmu <- struct{}{}:
		err = c.closeFrame(by, code, reason)
		<-c.fmu
	case <-c.ctx.Done(): // ended meanwhile, by the timer or anyone
		err = net.ErrClosed
	}
	if !t.Stop() {
		<-aborted
		err = errors.New("chiws: close handshake timed out; connection aborted")
	}
	return err
}

// closeFrame, under fmu: coder's close goes first; a broken connection takes none.
func (c *Conn) closeFrame(by error, code websocket.StatusCode, reason string) error {
	c.end.mu.Lock()
	if p := c.end.coder; p.by != nil {
		by, code, reason = p.by, p.code, p.reason
	}
	c.end.mu.Unlock()
	switch {
	case c.nc.broke.Load():
		return c.abort(ErrConnectionLost, "")
	case by != nil && !c.nc.isClosed(): // not after the peer's close, say
		c.decide(by, code, reason)
	}
	return c.Conn.Close(code, reason)
}

// abort records by and closes the network connection, then coder's (whose
// CloseNow waits for a handshake under way).
func (c *Conn) abort(by error, reason string) error {
	c.decide(by, websocket.StatusAbnormalClosure, reason)
	_ = c.nc.abort()
	return c.Conn.CloseNow()
}

// Close performs the close handshake after the frame being written (aborted past
// CloseTimeout), recording ErrClosedByServer and the code sent: 1011 for a bad code or reason.
func (c *Conn) Close(code websocket.StatusCode, reason string) error {
	return c.shut(ErrClosedByServer, code, reason)
}

// CloseWith closes as Close does, with cause as why the socket ended (an expired
// credential, a hub's "too slow"): context.Cause(c.Context()) matches cause and
// ErrClosedByServer with the code sent; the close log says closedBy "server" and
// cause's text. ErrShuttingDown, the one sentinel it takes, marks a shutdown's close.
func (c *Conn) CloseWith(cause error, code websocket.StatusCode, reason string) error {
	return c.shut(cmp.Or(cause, ErrClosedByServer), code, reason)
}

// CloseNow closes the connection without a handshake: ErrClosedByServer.
func (c *Conn) CloseNow() error { return c.CloseNowWith(nil) }

// CloseNowWith is CloseNow with cause as why the socket ended, as CloseWith's.
func (c *Conn) CloseNowWith(cause error) error { return c.abort(cmp.Or(cause, ErrClosedByServer), "") }

// AddLogFields adds fields (the user, a tenant) to this socket's log lines.
func (c *Conn) AddLogFields(fields ...zap.Field) {
	c.end.mu.Lock()
	defer c.end.mu.Unlock()
	c.end.fields = append(c.end.fields, fields...)
}

func (c *Conn) logFields(extra ...zap.Field) []zap.Field {
	c.end.mu.Lock()
	defer c.end.mu.Unlock()
	f := append(c.req.fields(), c.end.fields...)
	return append(f, extra...)
}

// logClose writes the close log once, and extra first, under logMu: Shutdown
// may write it in the handler's stead, and returns only once it is written.
func (c *Conn) logClose(extra func()) {
	c.end.logMu.Lock()
	defer c.end.logMu.Unlock()
	if c.end.logged {
		return
	}
	c.end.logged = true
	if extra != nil {
		extra()
	}
	ce := c.m.cfg.log.Check(zap.DebugLevel, "websocket closed")
	if ce == nil {
		return
	}
	cause, at := c.end.cause, c.end.at // never written again
	by, ok := closedBy(cause.by)
	f := c.logFields(
		zap.Int(keyCloseCode, int(cause.code)),
		zap.String(keyCloseReason, clip(cause.reason)),
		zap.String(keyClosedBy, by),
		zap.Duration(keyDuration, at.Sub(c.start)),
		zap.Uint64(keyMessagesIn, c.msgsIn.Load()),
		zap.Uint64(keyMessagesOut, c.msgsOut.Load()),
		zap.Int64(keyBytesIn, c.nc.bytesIn.Load()),
		zap.Int64(keyBytesOut, c.nc.bytesOut.Load()),
	)
	if !ok {
		f = append(f, zap.String(keyCause, clip(cause.by.Error())))
	}
	ce.Write(f...)
}

// socketEnd is the state of a socket's end; only this file touches it.
type socketEnd struct {
	mu      sync.Mutex
	cause   closeCause  // decided once (by nil: not yet)
	ops     int         // reads, writes and pings through Conn in progress
	ctxNote string      // an operation's context ended with the socket open
	coder   closeCause  // the close coder/websocket sent for a refused frame
	closed  bool        // the network connection closed
	ended   bool        // ending ran, or is running
	at      time.Time   // when the connection closed
	fields  []zap.Field // added by AddLogFields

	logMu  sync.Mutex // held while the close log is written
	logged bool
}
