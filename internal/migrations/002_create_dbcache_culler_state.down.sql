DROP TABLE IF EXISTS dbcache_culler_state;
