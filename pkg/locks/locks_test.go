package locks

import (
	"sync"
	"testing"
)

func TestTryAcquire(t *testing.T) {
	var s Set
	if !s.TryAcquire("a", "b") {
		t.Fatal("first acquire failed")
	}
	if s.TryAcquire("b", "c") {
		t.Fatal("acquired a held key")
	}
	if !s.TryAcquire("c") {
		t.Fatal("a failed TryAcquire must not keep the free keys it saw")
	}
	s.Release("a", "b")
	if !s.TryAcquire("a", "b") {
		t.Fatal("released keys not free")
	}
}

func TestTryAcquireConcurrent(t *testing.T) {
	var s Set
	var mu sync.Mutex
	inside := 0
	var wg sync.WaitGroup
	for i := 0; i < 64; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; j < 200; j++ {
				if !s.TryAcquire("k") {
					continue
				}
				mu.Lock()
				inside++
				if inside != 1 {
					t.Error("two holders of one key")
				}
				inside--
				mu.Unlock()
				s.Release("k")
			}
		}()
	}
	wg.Wait()
}
