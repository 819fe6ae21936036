-- The rate limiter's state (package ratelimit): one row per limited key,
-- holding GCRA's theoretical arrival time. A table of its own, not rows of
-- the cache table: the culler must never remove one (a removed row forgets
-- what its key was admitted and lets a whole burst through again), and the
-- cache's Clear, MaxEntries, MaxBytes and MaxAge are about cache entries.
-- Stale rows (whose time has passed, so they say no more than a missing
-- row does) are removed by ratelimit's Sweep.
--
-- key: the limiter's key prefix and the caller's key. COLLATE "C" compares
--      bytes, so equality and Sweep's walk never depend on the locale.
-- tat: the theoretical arrival time, in nanoseconds since the Unix epoch by
--      the database's clock: the key is back to its full burst at tat, and
--      a check of n units is admitted while tat + n emission intervals is
--      at most now + the burst's span (see docs/ratelimit.md).
--
-- fillfactor 90 leaves room on each page, so an admission's update (tat
-- is in no index) stays a HOT update on the row's own page.
--
-- One statement, so the file also runs where each migration must be a
-- single command (Citus).
CREATE TABLE IF NOT EXISTS dbcache_rate_limits (
    key text COLLATE "C" PRIMARY KEY,
    tat bigint NOT NULL
) WITH (fillfactor = 90);
