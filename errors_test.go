package chiws

import (
	"errors"
	"testing"

	"github.com/coder/websocket"
)

// TestCloseCause: the cause of Conn.Context matches its sentinel with
// errors.Is and gives its close code to websocket.CloseStatus, and each
// sentinel has a closedBy name of its own.
func TestCloseCause(t *testing.T) {
	sentinels := []error{ErrClosedByPeer, ErrClosedByServer, ErrKeepAliveTimeout, ErrShuttingDown,
		ErrHandlerReturned, ErrHandlerPanicked, ErrConnectionLost}
	names := map[string]bool{}
	for _, by := range sentinels {
		name, _ := closedBy(by)
		names[name] = true
		withCode := &closeCause{by: by, code: websocket.StatusGoingAway, reason: "bye"}
		if !errors.Is(withCode, by) || websocket.CloseStatus(withCode) != websocket.StatusGoingAway {
			t.Errorf("%v: errors.Is %v, CloseStatus %d", withCode, errors.Is(withCode, by), websocket.CloseStatus(withCode))
		}
		noCode := &closeCause{by: by, code: websocket.StatusAbnormalClosure}
		if !errors.Is(noCode, by) || websocket.CloseStatus(noCode) != -1 {
			t.Errorf("%v: errors.Is %v, CloseStatus %d, want -1: no close frame", noCode, errors.Is(noCode, by), websocket.CloseStatus(noCode))
		}
		for _, other := range sentinels {
			if other != by && errors.Is(withCode, other) {
				t.Errorf("%v also matches %v", withCode, other)
			}
		}
	}
	if len(names) != len(sentinels) {
		t.Errorf("closedBy names %v: not one per cause", names)
	}
}
