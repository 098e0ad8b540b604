// Package locks provides keyed try-locks: concurrent work on the same key fails at once
// instead of queueing, and the CSI handler answers Aborted so the sidecar retries.
package locks

import "sync"

// Set is a set of held keys. The zero value is ready to use.
type Set struct {
	mu   sync.Mutex
	held map[string]struct{}
}

// TryAcquire takes all keys, or none when any is held, and reports which.
// Keys are taken together so a caller never holds half of what it needs.
func (s *Set) TryAcquire(keys ...string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.held == nil {
		s.held = map[string]struct{}{}
	}
	for _, k := range keys {
		if _, busy := s.held[k]; busy {
			return false
		}
	}
	for _, k := range keys {
		s.held[k] = struct{}{}
	}
	return true
}

// Release frees keys taken by TryAcquire.
func (s *Set) Release(keys ...string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, k := range keys {
		delete(s.held, k)
	}
}
