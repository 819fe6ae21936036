-- The compare-and-swap token (dbcache.CompareAndSwapper): 64 random bits
-- that every write of an entry's value draws anew, so a token read with
-- GetWithToken matches the entry only until its next write. Random, not a
-- per-row counter and not xmin: an entry deleted and written again gets a
-- fresh token rather than a count that starts over (no ABA), and xmin
-- changes when nothing did (a Touch, a row locked FOR UPDATE, a frozen
-- tuple) and repeats across wraparound. 64 bits from gen_random_uuid(),
-- which reads the server's strong random source (setseed() cannot replay
-- it, as it replays random()), and needs no sequence: nothing to grant to
-- the cache's role, nothing to keep in step across a dump and restore.
--
-- The column is added without a default, which changes only the catalog
-- (rows already there read NULL, token 0 to the library), and the default
-- is set in a second statement: a volatile default in ADD COLUMN would
-- rewrite the table to fill it. SET DEFAULT applies to rows inserted later
-- and rewrites nothing. Inserts take the default (also those of a binary
-- that predates this migration); upserts that replace a value set token =
-- EXCLUDED.token; the UPDATEs that store a value (Incr, CompareAndSwap)
-- set 64 bits the library draws the same way (crypto/rand), since Citus
-- refuses a volatile function in an UPDATE's SET.
--
-- Both statements take an ACCESS EXCLUSIVE lock for the instant of a
-- catalog change; lock_timeout keeps a migration that cannot get it from
-- making the cache's statements queue behind it for longer than 5 s (it
-- then fails, changes nothing, and can be run again).
SELECT set_config('lock_timeout', '5s', true);

ALTER TABLE dbcache_entries ADD COLUMN IF NOT EXISTS token bigint;

-- Bytes 11-16 of one UUID and 11-12 of another: version 4 UUIDs fix the
-- version nibble (byte 7) and the variant bits (byte 9), so those bytes
-- are all random: 48 + 16 bits.
ALTER TABLE dbcache_entries ALTER COLUMN token SET DEFAULT
    ('x' || encode(substring(uuid_send(gen_random_uuid()) FROM 11 FOR 6) || substring(uuid_send(gen_random_uuid()) FROM 11 FOR 2), 'hex'))::bit(64)::bigint;
