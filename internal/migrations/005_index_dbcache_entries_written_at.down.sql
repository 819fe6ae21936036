DROP INDEX IF EXISTS dbcache_entries_written_at_idx;
