-- The cache table. It lives in the schema first on the connection's
-- search_path, so two caches in one database are two schemas.
--
-- key:     the made key (prefix:version:key). COLLATE "C" compares bytes, so
--          ordering and equality never depend on the database's locale.
-- value:   raw bytes; bytea keeps NUL bytes and non-UTF-8 intact.
-- expires: NULL means the entry never expires.
CREATE TABLE IF NOT EXISTS dbcache_entries (
    key     text COLLATE "C" PRIMARY KEY,
    value   bytea NOT NULL,
    expires timestamptz
);

-- Serves the expiry sweep (expires <= now()) and culling in expiry order
-- (soonest first, never-expiring NULLs last, which is btree's default order)
-- as bounded index walks instead of table scans.
CREATE INDEX IF NOT EXISTS dbcache_entries_expires_idx ON dbcache_entries (expires);
