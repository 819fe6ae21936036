package dbcache

// SetTestBeforeGetOrSetWrite lets tests run code between GetOrSet's read and
// its write, to make another writer win the race (Django's
// test_get_or_set_racing mocks add for the same purpose).
func SetTestBeforeGetOrSetWrite(c *Cache, f func()) { c.s.testBeforeGetOrSetWrite = f }
