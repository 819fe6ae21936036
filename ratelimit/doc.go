// Package ratelimit keeps rate limits in the PostgreSQL database an
// application already runs, shared by every process that uses it, as
// go-redis/redis_rate keeps them in Redis: login attempts per account,
// requests per API key, bytes per tenant.
//
//	logins, err := ratelimit.New(ctx, pool, &ratelimit.Config{KeyPrefix: "login:"})
//	res, err := logins.Allow(ctx, account, ratelimit.PerMinute(5))
//	if err != nil || !res.Allowed {
//		// refuse; res.RetryAfter says when to come back
//	}
//
// The state lives in a table of its own (dbcache_rate_limits, migration
// 006), which the culler does not touch: culling a limit's state would let
// a whole burst through again.
//
// # The algorithm and its bound
//
// Each check is GCRA (the generic cell rate algorithm, redis_rate's
// choice): a key's state is one time, its theoretical arrival time; a check
// of n units is admitted while that time plus n emission intervals T
// (Period / Rate, rounded up to a whole nanosecond) is no later than now
// plus Burst × T, and moves the time on by n × T. For one key checked with one
// Limit, the units admitted whose Result.At lies in any interval [a, b] of
// the database's clock total at most Burst + ⌊(b − a) / T⌋. So a window
// [a, a + Period) holds at most Burst + Rate − 1 units, and with Burst 1 at
// most Rate: a strict sliding window. docs/ratelimit.md proves it step by
// step, and says what a Sweep and a crash can change.
//
// # One statement per check
//
// A check is one SQL statement, atomic, correct under any interleaving of
// any number of processes: it reads the clock once, denies from its
// snapshot without writing or locking anything, and admits only on the
// row's newest version, under its row lock. Its writes run at READ
// COMMITTED whatever the session's default isolation (a repeatable-read
// database default included), in one round trip; it keeps no session
// state, so it works behind PgBouncer in transaction pooling (name the
// schema in Config.Schema there); the key column compares bytes, whatever
// the database's collation. The database's clock decides, never the
// application's.
//
// # Errors
//
// A Limit that bounds nothing (Rate or Period not positive) is
// ErrInvalidLimit, and so is an n above the Burst; a key the table cannot
// hold is ErrInvalidKey: each is returned before anything is read or
// written. A check that fails (a lost connection, a timeout) may or may
// not have counted its units: treat it as not admitted. Every call is
// bounded by Config.OpTimeout when its context has no deadline, so a
// server that stops answering costs a request seconds, not a hang.
//
// # Durability
//
// An admitted check is as durable as the server's synchronous_commit
// makes it: with the default, an acknowledged admission survives a crash.
// Config.FastCommit trades that for speed; docs/ratelimit.md says how many
// units a crash can then let through again.
//
// # Telemetry
//
// Config.Tracer sees every check, with Config.Name and without its key;
// prommetrics.Collector is one, counting checks by result (allowed,
// rejected, error).
package ratelimit
