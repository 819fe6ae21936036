DROP TABLE IF EXISTS dbcache_lock_fences;
