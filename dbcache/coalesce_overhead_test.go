package dbcache

import (
	"context"
	"testing"
)

// BenchmarkCoalescerFreeSlot is what a lone writer pays for write
// coalescing: the free-slot path of the Set and Incr coalescers around a
// statement that costs nothing (a real one takes tens of microseconds).
//
//	go test -run '^$' -bench CoalescerFreeSlot ./dbcache/
func BenchmarkCoalescerFreeSlot(b *testing.B) {
	ctx := context.Background()
	b.Run("incr", func(b *testing.B) {
		g := newIncrCoalescer(nil, CoalesceWritesFastDefault)
		own := func() (int64, error) { return 1, nil }
		b.ReportAllocs()
		for b.Loop() {
			if _, err := g.incr(ctx, "incr", ":1:k", "1", own); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("slots", func(b *testing.B) {
		s := &slots[*setReq]{max: CoalesceWritesFastDefault}
		b.ReportAllocs()
		for b.Loop() {
			s.mu.Lock()
			if s.inflight < s.max {
				s.inflight++
			}
			s.mu.Unlock()
			s.release()
		}
	})
}
