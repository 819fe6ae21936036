package replicas

// Pick is the routing decision of one read, for the benchmark of its
// cost: a standby's index, or -1 for the primary.
func (c *Cache) Pick() int { return c.pick() }
