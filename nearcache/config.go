package nearcache

import (
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/dbcache/dbcache/dbcache"
)

const (
	// MaxBytesDefault is the default for Config.MaxBytes: 64 MiB.
	MaxBytesDefault = 64 << 20

	// MaxStalenessDefault is the default for Config.MaxStaleness. It must
	// cover a heartbeat's interval plus its round trip through the
	// database's WAL and the feed (a local fsync and a few milliseconds on
	// a healthy server), with room for a busy one.
	MaxStalenessDefault = time.Second

	// FeedTimeoutDefault is the default for Config.FeedTimeout.
	FeedTimeoutDefault = 10 * time.Second

	// StartTimeoutDefault is the default for Config.StartTimeout.
	StartTimeoutDefault = 30 * time.Second
)

// Config configures a near cache. The zero value (or nil) is valid.
type Config struct {
	// MaxBytes bounds the memory the local copies take: their keys' and
	// values' bytes plus a fixed overhead per entry. When it is reached,
	// the entries least likely to be read again go first (W-TinyLFU, by
	// github.com/maypok86/otter). Defaults to MaxBytesDefault.
	MaxBytes int64

	// MaxEntryBytes is the largest value the layer keeps a copy of; larger
	// ones are always read from the store. Defaults to MaxBytes/64.
	MaxEntryBytes int

	// MaxStaleness is the staleness bound: a local copy is served only
	// while the feed has shown, within the last MaxStaleness, that every
	// write committed before then has been applied. A read through the
	// layer therefore sees every write that returned to its writer more
	// than MaxStaleness before the read. While the feed lags further (a
	// busy server, an async commit not yet flushed) reads go to the
	// store. Defaults to MaxStalenessDefault.
	MaxStaleness time.Duration

	// HeartbeatInterval is how often the layer writes a heartbeat into the
	// WAL (one small statement on the pool, which flushes the WAL) and
	// waits for it on the feed. Defaults to MaxStaleness/5.
	HeartbeatInterval time.Duration

	// FeedTimeout is how long the feed may stay silent (no change, no
	// heartbeat, no keepalive) before its connection counts as lost: every
	// copy is dropped and the feed reconnects. Defaults to
	// FeedTimeoutDefault.
	FeedTimeout time.Duration

	// StartTimeout bounds each start of the feed: connecting, creating the
	// replication slot (which waits for transactions open at that moment
	// to end) and starting replication. Defaults to StartTimeoutDefault.
	StartTimeout time.Duration

	// Publication is the publication the feed reads; Setup creates it.
	// Defaults to PublicationName(schema) for the table's schema.
	Publication string

	// Replication is the connection the feed opens, in replication mode
	// (replication=database is set on a copy): its role needs the
	// REPLICATION attribute, or to be a superuser. Defaults to the pool's
	// connection config.
	Replication *pgconn.Config

	// MakeKey makes the stored key of a caller key as the Store does, so
	// the feed's stored keys find the local copies. Defaults to the Store's
	// dbcache.KeyMaker (a *dbcache.Cache is one); a Store without one
	// needs it set.
	MakeKey func(key string) string

	// Schema is the schema of the cache table, as dbcache.Config.Schema.
	// Defaults to the pool's current_schema().
	Schema string

	// Logger receives the feed's state changes. Defaults to slog.Default().
	Logger *slog.Logger

	// Tracer sees the layer's hits, misses, invalidations and the feed's
	// state, for metrics. It must not block. Defaults to nil.
	Tracer Tracer

	// WriteBehind, when set, queues Sets in the process and commits them
	// in batches (see WriteBehind, and docs/nearcache.md, "Write-behind"):
	// a Set returns once its value is queued, this process reads it at
	// once, other processes within MaxStaleness + WriteBehind.MaxDelay,
	// and on a crash the writes that returned in the last MaxDelay may be
	// lost. Every other write is sent at once, after the queued writes of
	// its keys. Defaults to nil: every Set waits for its commit.
	WriteBehind *WriteBehind

	// TraceKeys lets the Tracer see stored keys (Invalidation.Key). Keys
	// can be personal data (an email in a session key), so by default no
	// key reaches the Tracer or the Logger. Defaults to false.
	TraceKeys bool
}

func (c *Config) withDefaults() Config {
	var out Config
	if c != nil {
		out = *c
	}
	if out.MaxBytes == 0 {
		out.MaxBytes = MaxBytesDefault
	}
	if out.MaxEntryBytes == 0 {
		out.MaxEntryBytes = int(out.MaxBytes / 64)
	}
	if out.MaxStaleness == 0 {
		out.MaxStaleness = MaxStalenessDefault
	}
	if out.HeartbeatInterval == 0 {
		out.HeartbeatInterval = out.MaxStaleness / 5
	}
	if out.FeedTimeout == 0 {
		out.FeedTimeout = FeedTimeoutDefault
	}
	if out.StartTimeout == 0 {
		out.StartTimeout = StartTimeoutDefault
	}
	if out.Logger == nil {
		out.Logger = slog.Default()
	}
	if out.WriteBehind != nil {
		wb := *out.WriteBehind
		if wb.MaxDelay == 0 {
			wb.MaxDelay = MaxDelayDefault
		}
		if wb.MaxQueued == 0 {
			wb.MaxQueued = MaxQueuedDefault
		}
		if wb.MaxWait == 0 {
			wb.MaxWait = dbcache.OpTimeoutDefault
		}
		out.WriteBehind = &wb
	}
	return out
}

func (c *Config) validate() error {
	var errs []error
	if c.MaxBytes < 0 {
		errs = append(errs, fmt.Errorf("nearcache: Config.MaxBytes %d is negative", c.MaxBytes))
	}
	if c.MaxEntryBytes < 0 {
		errs = append(errs, fmt.Errorf("nearcache: Config.MaxEntryBytes %d is negative", c.MaxEntryBytes))
	}
	if c.MaxStaleness < 0 {
		errs = append(errs, fmt.Errorf("nearcache: Config.MaxStaleness %s is negative", c.MaxStaleness))
	}
	if c.HeartbeatInterval <= 0 || c.HeartbeatInterval >= c.MaxStaleness {
		errs = append(errs, fmt.Errorf("nearcache: Config.HeartbeatInterval %s must be positive and shorter than MaxStaleness %s (the bound needs a heartbeat within it)", c.HeartbeatInterval, c.MaxStaleness))
	}
	if c.FeedTimeout <= c.HeartbeatInterval {
		errs = append(errs, fmt.Errorf("nearcache: Config.FeedTimeout %s must be longer than HeartbeatInterval %s", c.FeedTimeout, c.HeartbeatInterval))
	}
	if c.StartTimeout < 0 {
		errs = append(errs, fmt.Errorf("nearcache: Config.StartTimeout %s is negative", c.StartTimeout))
	}
	if wb := c.WriteBehind; wb != nil && (wb.MaxDelay < 0 || wb.MaxQueued < 0 || wb.MaxWait < 0) {
		errs = append(errs, fmt.Errorf("nearcache: Config.WriteBehind: MaxDelay %s, MaxQueued %d and MaxWait %s must not be negative", wb.MaxDelay, wb.MaxQueued, wb.MaxWait))
	}
	if c.Schema != "" && !identRE.MatchString(c.Schema) {
		errs = append(errs, fmt.Errorf("nearcache: Config.Schema %q is not a valid schema name (letters, digits, _ and $, at most 63)", c.Schema))
	}
	if c.Publication != "" && !identRE.MatchString(c.Publication) {
		errs = append(errs, fmt.Errorf("nearcache: Config.Publication %q is not a valid publication name (letters, digits, _ and $, at most 63)", c.Publication))
	}
	return errors.Join(errs...)
}
