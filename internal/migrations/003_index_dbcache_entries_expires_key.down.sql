CREATE INDEX IF NOT EXISTS dbcache_entries_expires_idx ON dbcache_entries (expires);

DROP INDEX IF EXISTS dbcache_entries_expires_key_idx;
