package broadcast

import (
	"runtime"
	"strings"
)

// HoldQueue locks m's queue, as a fan-out busy with m would hold its
// topic; release unlocks it.
func HoldQueue(m *Member) (release func()) {
	m.mu.Lock()
	return m.mu.Unlock
}

// WaitingToAdd reports whether a goroutine waits in topic.add for a
// topic's lock: a Join held up by that topic's fan-out.
func WaitingToAdd() bool {
	buf := make([]byte, 1<<20)
	stacks := string(buf[:runtime.Stack(buf, true)])
	for _, g := range strings.Split(stacks, "\n\n") {
		if strings.Contains(g, "broadcast.(*topic).add(") && strings.Contains(g, "sync.(*RWMutex).Lock(") {
			return true
		}
	}
	return false
}
