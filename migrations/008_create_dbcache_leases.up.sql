-- Leases (dbcache.Leaser): short, token-fenced claims on a key, taken by
-- GetOrSetFunc's loaders so one process loads a missing key while the
-- others wait, and by the locks built on them. A table of its own, not rows
-- of the cache table: no publication covers it (the near cache's feed
-- publishes dbcache_entries alone), and the culler, Clear, Keys and
-- DeletePrefix never see it. Expired rows are taken over by the next
-- acquire of their key and otherwise left: at most one small row per key
-- ever leased, and Clear of the cache does not clear them.
--
-- UNLOGGED: a lease lives for seconds, and a crash that empties the table
-- (what PostgreSQL does to an unlogged table after a crash) only frees
-- every lease early; no WAL is written for a lease, so acquiring one costs
-- no flush and no replica traffic.
--
-- key:      the made key (the cache's KeyFunc: prefix, version, key).
--           COLLATE "C" compares bytes, as the cache table's key does.
-- token:    the holder's random, opaque token; release, extend and a
--           fenced write succeed only with it.
-- expires:  when the lease ends, by the database's clock.
-- acquired: when it was taken, by the database's clock (the acquire's
--           statement_timestamp(), which its ON CONFLICT clause reads as
--           EXCLUDED.acquired: Citus refuses a function call there).
--
-- One statement, so the file also runs where each migration must be a
-- single command (Citus).
CREATE UNLOGGED TABLE IF NOT EXISTS dbcache_leases (
    key      text COLLATE "C" PRIMARY KEY,
    token    text NOT NULL,
    expires  timestamptz NOT NULL,
    acquired timestamptz NOT NULL DEFAULT statement_timestamp()
);
