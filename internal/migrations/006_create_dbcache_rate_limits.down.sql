DROP TABLE IF EXISTS dbcache_rate_limits;
