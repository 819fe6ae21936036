-- What the culler (package culling) did last, for `dbcache stats` and other
-- processes to read: one row, rewritten at the end of every completed pass.
-- Times come from the database clock. Passes that were skipped (another culler
-- held the lock) or failed are not recorded.
CREATE TABLE IF NOT EXISTS dbcache_culler_state (
    -- Always true: the CHECK and the primary key keep the table to one row.
    singleton             boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    -- When the last completed pass started and finished, and what it did.
    last_pass_started_at  timestamptz NOT NULL,
    last_pass_finished_at timestamptz NOT NULL,
    last_expired_removed  bigint NOT NULL,
    last_culled           bigint NOT NULL,
    -- Rows the pass counted after its expiry sweep, whether that count was
    -- exact (a bounded walk) or PostgreSQL's live-row estimate, and the rows
    -- left after culling (count minus culled).
    last_count            bigint NOT NULL,
    last_count_exact      boolean NOT NULL,
    last_remaining        bigint NOT NULL,
    -- When a pass last culled (removed live rows because the table was over
    -- MaxEntries); NULL if none ever did.
    last_cull_at          timestamptz,
    -- Totals over every recorded pass.
    passes                bigint NOT NULL,
    total_expired_removed bigint NOT NULL,
    total_culled          bigint NOT NULL,
    -- Who ran the last pass: host name and process id.
    runner                text NOT NULL
);
