// Package replicas reads a dbcache cache from PostgreSQL hot standbys
// while they are within a lag bound the caller sets, and from the primary
// otherwise; writes always go to the primary.
//
// # Setup
//
// Migrate the primary as for a single cache (the standbys replay it), then
// give New the primary's pool and the standbys':
//
//	cache, err := replicas.New(ctx, primaryPool, []*pgxpool.Pool{standbyPool},
//		&replicas.Config{Cache: &dbcache.Config{KeyPrefix: "myapp"}, MaxLag: time.Second})
//
// New builds a dbcache.Cache over each pool with Config.Cache (dbcache.New
// works on a hot standby: a Cache's reads never write). New never closes
// the pools it is given. *Cache implements dbcache.Store and the
// capabilities TTLReader, KeyLister, Versioner, KeyMaker and Loader, and
// io.Closer, so the typed layer, metrics and the CLI work over it
// unchanged. Nothing here needs a superuser: any role may read the WAL
// positions it samples.
//
// # Which server answers
//
// Get, GetMany, HasKey, GetWithTTL, TTL and Keys go to a standby that is
// within the bound, taken in turn, and else to the primary. Every other
// operation, GetOrSet and the loaders included, goes to the primary.
//
// # The lag bound, measured by one clock
//
// Every RefreshInterval while reads arrive (none while the cache is idle),
// a sampler reads the primary's pg_current_wal_insert_lsn() and then each
// standby's pg_last_wal_replay_lsn(), noting when it sent each statement
// by this process's monotonic clock. Every write the primary acknowledged
// before a sample was sent lies before the sample's position, so a
// standby that has replayed that position has the write; a standby
// covers the send time of the newest primary sample at or below its
// replay position. A read begun at time r goes to a standby only if the
// standby covers r - MaxLag (and some sample: writes made before New are
// older than any time this clock can name), so a read from a standby sees
// every write the primary acknowledged more than MaxLag before the read
// began. No
// server's clock enters this, and no two clocks are compared; a slow
// sampler only sends more reads to the primary. Deciding costs a clock
// read and a few atomic loads, with no round trip.
//
// # Reading your own writes
//
// Each write through the Cache records when it ended (a failed one too: it
// may have committed), and a standby serves a read only once it covers
// that time as well, so a process's reads through a Cache see its writes
// through it at once, from any goroutine. Writes made another way (through
// Primary, or another process) are bounded by MaxLag alone.
//
// # A standby that fails
//
// A standby read that fails with a transient error (dbcache.IsTransient)
// is run again on the primary, and the caller gets the primary's answer.
// A standby read other than Keys is bounded by Config.OpTimeout whatever
// the caller's deadline (each page of Keys is bounded as a dbcache.Cache
// bounds it: by the caller's deadline when there is one). A read the standby cancels for a recovery conflict (SQLSTATE
// 40001: replay needed what the read held) is counted in
// Stats.RecoveryConflicts and the standby stays in service; any other
// failure takes the standby out of service until a sample sent after it
// succeeds. A standby whose last successful sample began more than
// OpTimeout ago serves no read, so every read decided more than one
// OpTimeout after a standby stopped or went silent goes to the primary.
// A server that is not in recovery (a primary, or a promoted standby)
// serves no read.
//
// # Expiry is the answering server's clock
//
// An entry's expiry is a time the primary wrote; a read compares it with
// the clock of the server that runs the read. A standby whose clock is
// behind the primary's by d serves an entry for up to d after it expired
// and reads remaining lifetimes d longer; one ahead by d misses an entry
// up to d before it expires and reads lifetimes d shorter. Keep the
// servers' clocks synchronized (NTP does to well under a millisecond)
// far closer than the shortest timeout that matters.
//
// # Failover
//
// A dbcache.Cache, a culling.Culler and a near cache over a pool whose DSN
// names the primary and its standby with target_session_attrs=read-write
// carry on after the standby is promoted, without a restart: see
// docs/scale-out.md for what is lost and how long it takes.
package replicas
