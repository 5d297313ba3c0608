package broadcast

// HoldQueue locks m's queue, as a fan-out busy with m would hold its
// topic; release unlocks it.
func HoldQueue(m *Member) (release func()) {
	m.mu.Lock()
	return m.mu.Unlock
}
