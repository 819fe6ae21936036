package dbcache

// Statements returns the SQL the cache's pool operations run, by operation,
// so benchmarks can run the very same statements through raw pgx as a
// baseline, and tests can run them one at a time.
func Statements(c *Cache) map[string]string {
	q := c.q
	return map[string]string{
		"get": q.get, "has_key": q.hasKey, "set": q.set, "add": q.add, "get_or_set": q.getOrSet,
		"touch": q.touch, "delete": q.del, "incr": q.incr, "incr_check": q.incrCheck, "move": q.move,
		"get_many": q.getMany, "set_many": q.setMany, "delete_many": q.deleteMany, "clear_batch": q.clearBatch,
		"delete_prefix_batch": q.deletePrefixBatch, "keys_page": q.keysPage, "get_remaining": q.getRemaining, "ttl": q.ttl,
		"get_or_set_leased": q.getOrSetLeased, "set_leased": q.setLeased,
		"lease_acquire": q.leaseAcquire, "lease_extend": q.leaseExtend, "lease_release": q.leaseRelease,
		"get_with_token": q.getWithToken, "compare_and_swap": q.compareAndSwap, "compare_and_delete": q.compareAndDelete,
		"set_batch": q.setBatch, "incr_batch": q.incrBatch,
	}
}

// CoalescedBatches returns how many queries answered more than one Get.
func CoalescedBatches(c *Cache) int64 {
	if c.s.gets == nil {
		return 0
	}
	return c.s.gets.batches.Load()
}
