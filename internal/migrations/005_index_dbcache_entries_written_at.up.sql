-- Finds the entries older than the culler's maximum age without a scan, in
-- (written_at, key) order so a pass resumes each batch where the last one
-- stopped, ties included.
--
-- Partial: an entry is indexed only while it never expires or expires more
-- than an hour after it was written. Every live entry older than an hour
-- satisfies that (expires > now > written_at + 1 hour), so for a maximum age
-- of an hour or more (culling.MaxAgeMin) the index holds every entry a pass
-- must remove, while a write with a timeout of an hour or less, the common
-- case, adds no index entry at all and costs what it did before.
-- (timestamptz - timestamptz is immutable, as an index predicate must be;
-- timestamptz + interval is not.)
--
-- One transaction, not CREATE INDEX CONCURRENTLY, for the reason migration
-- 003 gives; the build blocks writes, not reads, while it reads the table.
-- On a large live table build it by hand first with
--   CREATE INDEX CONCURRENTLY dbcache_entries_written_at_idx ON dbcache_entries (written_at, key)
--     WHERE expires IS NULL OR expires - written_at > interval '1 hour';
-- and this migration keeps it.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_index
                WHERE indexrelid = to_regclass('dbcache_entries_written_at_idx')
                  AND NOT indisvalid) THEN
        DROP INDEX dbcache_entries_written_at_idx;
    END IF;
END
$$;

CREATE INDEX IF NOT EXISTS dbcache_entries_written_at_idx ON dbcache_entries (written_at, key)
    WHERE expires IS NULL OR expires - written_at > interval '1 hour';
