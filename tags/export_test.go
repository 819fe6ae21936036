package tags

// MemoLen and MemoBytes are the memo's size, for the tests.
func (c *Cache) MemoLen() (keys, bytes int) {
	c.memoMu.Lock()
	defer c.memoMu.Unlock()
	return len(c.memo), c.memoBytes
}
