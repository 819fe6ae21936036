-- Reverting drops every lease: loads and locks in flight lose theirs (a
-- fenced write then stores nothing).
DROP TABLE IF EXISTS dbcache_leases;
