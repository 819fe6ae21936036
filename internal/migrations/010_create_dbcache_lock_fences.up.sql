-- Fencing tokens of the locks (package lock): one row per lock name, the
-- number of the name's latest grant. A lock is a lease (dbcache_leases,
-- migration 8); a grant takes the lease, then, in a statement that locks
-- the lease row it holds, adds one to the name's fence here. The table is
-- logged (not UNLOGGED like the leases) and grants commit with
-- synchronous_commit on whatever the cache's FastCommit, so a fence a
-- caller was told survives a crash and is never issued twice: the leases
-- may all be lost in a crash (PostgreSQL empties an unlogged table), the
-- fences never go back. Nothing else writes here: releases, the culler,
-- Clear and DeletePrefix never touch it. One small row per name ever
-- locked.
--
-- name:  the lock's made key, as its lease's key (COLLATE "C", byte order).
-- fence: the latest grant's fencing token; 1 for the first.
CREATE TABLE IF NOT EXISTS dbcache_lock_fences (
    name  text COLLATE "C" PRIMARY KEY,
    fence bigint NOT NULL
);
