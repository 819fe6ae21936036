-- When each entry was written, for the culler's maximum age (culling's
-- Config.MaxAge): no entry older than that survives a pass, whatever its
-- timeout. The DEFAULT fills it on every insert; an upsert that overwrites
-- an entry's value sets it again (written_at = EXCLUDED.written_at).
--
-- statement_timestamp() is stable, not volatile, so PostgreSQL stores the
-- value this ALTER computes once in the catalog for the rows already there
-- (they count as written when the migration ran) and rewrites nothing: the
-- change is instant at any table size. It takes an ACCESS EXCLUSIVE lock for
-- that instant; lock_timeout keeps a migration that cannot get it (a long
-- transaction holds the table) from making the cache's statements queue
-- behind it for longer than 5 s. The migration then fails, changes nothing,
-- and can be run again.
--
-- The culler's state table records the new limits and what they removed.
SELECT set_config('lock_timeout', '5s', true);

ALTER TABLE dbcache_entries
    ADD COLUMN IF NOT EXISTS written_at timestamptz NOT NULL DEFAULT statement_timestamp();

ALTER TABLE dbcache_culler_state
    -- Rows the last pass removed because they were older than MaxAge, and
    -- the total over every recorded pass.
    ADD COLUMN IF NOT EXISTS last_aged_out     bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS total_aged_out    bigint NOT NULL DEFAULT 0,
    -- The cache's size in bytes as the last pass estimated it after its
    -- sweep (NULL when it had no MaxBytes), and the bytes it culled.
    ADD COLUMN IF NOT EXISTS last_size         bigint,
    ADD COLUMN IF NOT EXISTS last_culled_bytes bigint NOT NULL DEFAULT 0,
    -- The limits the last pass enforced; NULL for none.
    ADD COLUMN IF NOT EXISTS max_entries       bigint,
    ADD COLUMN IF NOT EXISTS max_bytes         bigint,
    ADD COLUMN IF NOT EXISTS max_age           interval;
