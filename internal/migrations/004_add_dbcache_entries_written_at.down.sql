SELECT set_config('lock_timeout', '5s', true);

ALTER TABLE dbcache_culler_state
    DROP COLUMN IF EXISTS last_aged_out,
    DROP COLUMN IF EXISTS total_aged_out,
    DROP COLUMN IF EXISTS last_size,
    DROP COLUMN IF EXISTS last_culled_bytes,
    DROP COLUMN IF EXISTS max_entries,
    DROP COLUMN IF EXISTS max_bytes,
    DROP COLUMN IF EXISTS max_age;

ALTER TABLE dbcache_entries DROP COLUMN IF EXISTS written_at;
