package dbcache

import "context"

// SetTestBeforeGetOrSetWrite lets tests run code between GetOrSet's read and
// its write, to make another writer win the race (Django's
// test_get_or_set_racing mocks add for the same purpose).
func SetTestBeforeGetOrSetWrite(c *Cache, f func()) { c.s.testBeforeGetOrSetWrite = f }

// CoalesceInflight and CoalescePending report the coalescer's busy slots and
// queued Gets.
func CoalesceInflight(c *Cache) int {
	c.s.gets.mu.Lock()
	defer c.s.gets.mu.Unlock()
	return c.s.gets.inflight
}

// CoalesceLimit is the most Get queries the coalescer runs at once.
func CoalesceLimit(c *Cache) int { return c.s.gets.max }

func CoalescePending(c *Cache) int {
	c.s.gets.mu.Lock()
	defer c.s.gets.mu.Unlock()
	return len(c.s.gets.pending)
}

// CoalescedSetBatches, SetsInflight and SetsPending report the Set
// coalescer's batches, busy slots and queued Sets.
func CoalescedSetBatches(c *Cache) int64 { return c.s.sets.batches.Load() }

func SetsInflight(c *Cache) int {
	c.s.sets.mu.Lock()
	defer c.s.sets.mu.Unlock()
	return c.s.sets.inflight
}

func SetsPending(c *Cache) int {
	c.s.sets.mu.Lock()
	defer c.s.sets.mu.Unlock()
	return len(c.s.sets.pending)
}

// WriteCoalescers returns the slots of the Set and Incr coalescers, 0 for
// off.
func WriteCoalescers(c *Cache) (sets, incrs int) {
	if c.s.sets != nil {
		sets = c.s.sets.max
	}
	if c.s.incrs != nil {
		incrs = c.s.incrs.max
	}
	return sets, incrs
}

// CoalescedIncrBatches, IncrsInflight and IncrsPending report the Incr
// coalescer's batches, busy slots and queued Incrs.
func CoalescedIncrBatches(c *Cache) int64 { return c.s.incrs.batches.Load() }

func IncrsInflight(c *Cache) int {
	c.s.incrs.mu.Lock()
	defer c.s.incrs.mu.Unlock()
	return c.s.incrs.inflight
}

func IncrsPending(c *Cache) int {
	c.s.incrs.mu.Lock()
	defer c.s.incrs.mu.Unlock()
	return len(c.s.incrs.pending)
}

// FlightWaiting reports how many callers wait on the in-process load of
// key (0 when none is in flight).
func FlightWaiting(c *Cache, key string) int { return c.s.flights.Waiting(c.MakeKey(key)) }

// SetLeased is the refresh's fenced write of key: it stores value only
// while token holds key's live lease, and reports whether it did.
func SetLeased(ctx context.Context, c *Cache, key string, token LeaseToken, value []byte) (bool, error) {
	var stored bool
	err := c.fencedWrite(ctx, c.q.setLeased, c.q.citusSetLeased, []any{c.MakeKey(key), value, Forever.micros(c.s.cfg.DefaultTimeout), string(token)}, &stored)
	if isNoRows(err) {
		return false, nil
	}
	return stored, err
}

// GetOrSetLeased is GetOrSetFunc's fenced write (the plain statement or its
// Citus form, as c uses) of value under key, expiring in timeout, while
// token holds key's lease: the value the entry holds after it, and false
// when the lease was not live (nothing stored).
func GetOrSetLeased(ctx context.Context, c *Cache, key string, token LeaseToken, value []byte, timeout Timeout) ([]byte, bool, error) {
	var got []byte
	err := c.fencedWrite(ctx, c.q.getOrSetLeased, c.q.citusGetOrSetLeased, []any{c.MakeKey(key), value, timeout.micros(c.s.cfg.DefaultTimeout), string(token)}, &got)
	if isNoRows(err) {
		return nil, false, nil
	}
	return got, err == nil, err
}
