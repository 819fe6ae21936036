package sharded

// CacheTable exposes cacheTable to the tests, which check it against
// migrations.Table.
const CacheTable = cacheTable
