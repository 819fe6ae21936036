SELECT set_config('lock_timeout', '5s', true);

ALTER TABLE dbcache_entries DROP COLUMN IF EXISTS token;
