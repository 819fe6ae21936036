DROP TABLE IF EXISTS dbcache_entries;
