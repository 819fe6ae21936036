-- Replaces the index on expires alone with one on (expires, key).
--
-- The culler walks the table in eviction order (expires, then key) and
-- resumes each batch after the last row the previous batch removed, so a
-- pass costs what it removes. With an index on expires alone, rows that
-- share one expiry (a SetMany, a bulk INSERT … SELECT) have no position the
-- walk can resume from: every batch would read again the index entries of
-- the rows removed before it, which stay in the index while any transaction
-- holds an older snapshot. The new index serves every query the old one did
-- (the expiry sweep, eviction order), so the old one goes.
--
-- One transaction, not CREATE INDEX CONCURRENTLY: a concurrent build waits
-- for every transaction holding an older snapshot, and a second migrator
-- waiting on the migration lock holds one while it waits for this
-- migrator, which holds that lock: the two deadlock (PostgreSQL aborts one
-- of them after deadlock_timeout). A plain build never waits on other
-- snapshots; it blocks writes to the cache table, not reads, while it runs:
-- about a second per million rows. To avoid even that on a large live
-- table, build the index by hand first with
--   CREATE INDEX CONCURRENTLY dbcache_entries_expires_key_idx ON dbcache_entries (expires, key);
-- and this migration finds it and only drops the old index.

-- An INVALID index of this name is what a failed CREATE INDEX CONCURRENTLY
-- leaves behind: drop it and build it again rather than accept it.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_index
                WHERE indexrelid = to_regclass('dbcache_entries_expires_key_idx')
                  AND NOT indisvalid) THEN
        DROP INDEX dbcache_entries_expires_key_idx;
    END IF;
END
$$;

CREATE INDEX IF NOT EXISTS dbcache_entries_expires_key_idx ON dbcache_entries (expires, key);

DROP INDEX IF EXISTS dbcache_entries_expires_idx;
