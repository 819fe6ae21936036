package dbcache

import "time"

// Timeout says when an entry expires. It has three kinds, as Django's timeout
// argument does:
//
//   - DefaultTimeout, the zero value: use the cache's Config.DefaultTimeout
//     (Django's DEFAULT_TIMEOUT). A zero Timeout never silently means forever.
//   - Forever: the entry never expires (Django's None).
//   - TTL(d): the entry expires d after the database's clock at the time of
//     the write. d <= 0 means it expires at once (Django's 0 and negative
//     timeouts): a Set with it stores nothing a Get can see, Add still returns
//     whether it would have stored, and Touch expires a live entry.
//
// Durations are kept to the microsecond (PostgreSQL's resolution); a positive
// duration under a microsecond is rounded up to one.
type Timeout struct {
	d     time.Duration
	stale time.Duration // kindRevalidate only
	kind  timeoutKind
}

type timeoutKind uint8

const (
	kindDefault timeoutKind = iota
	kindForever
	kindTTL
	kindRevalidate
)

var (
	// DefaultTimeout means the cache's configured default. It is the zero
	// Timeout.
	DefaultTimeout = Timeout{}

	// Forever means the entry never expires (stored as a NULL expiry).
	Forever = Timeout{kind: kindForever}
)

// TTL returns a Timeout of d from the time of the write; d <= 0 expires at
// once.
func TTL(d time.Duration) Timeout { return Timeout{d: d, kind: kindTTL} }

// Revalidate returns a stale-while-revalidate Timeout: an entry written with
// it is fresh for fresh, then stale for up to stale more, and then expired.
// GetOrSetFunc returns a fresh entry as it is; a stale one it returns at
// once while one background refresh runs (one across every process sharing
// the table), and an expired one it loads as on a miss. To every other
// operation it is TTL(fresh + stale): the database's clock decides when the
// entry expires, and, from the remaining lifetime, whether it is stale.
// Negative durations count as 0: stale <= 0 is TTL(fresh), and fresh <= 0
// makes every GetOrSetFunc hit refresh.
func Revalidate(fresh, stale time.Duration) Timeout {
	return Timeout{d: max(fresh, 0), stale: max(stale, 0), kind: kindRevalidate}
}

// IsDefault reports whether t is DefaultTimeout.
func (t Timeout) IsDefault() bool { return t.kind == kindDefault }

// IsForever reports whether t is Forever.
func (t Timeout) IsForever() bool { return t.kind == kindForever }

// Duration returns the TTL and true for a TTL timeout (fresh + stale for a
// Revalidate one), and 0 and false for DefaultTimeout and Forever.
func (t Timeout) Duration() (time.Duration, bool) {
	switch t.kind {
	case kindTTL:
		return t.d, true
	case kindRevalidate:
		return t.d + t.stale, true
	}
	return 0, false
}

// Stale returns the stale period of a Revalidate timeout, and 0 and false
// for any other.
func (t Timeout) Stale() (time.Duration, bool) { return t.stale, t.kind == kindRevalidate }

// String renders the timeout for logs and errors.
func (t Timeout) String() string {
	switch t.kind {
	case kindForever:
		return "forever"
	case kindTTL:
		return t.d.String()
	case kindRevalidate:
		return t.d.String() + " fresh + " + t.stale.String() + " stale"
	default:
		return "default"
	}
}

// micros is the SQL parameter for the timeout: nil (NULL) for Forever, which
// makes statement_timestamp() + NULL a NULL expiry; otherwise microseconds.
// Passing an integer rather than an interval keeps the statements working in
// every pgx query mode, including the simple protocol PgBouncer needs.
func (t Timeout) micros(def Timeout) any {
	if t.kind == kindDefault {
		t = def
	}
	switch t.kind {
	case kindForever:
		return nil
	case kindTTL, kindRevalidate:
		d, _ := t.Duration()
		us := d.Microseconds()
		if d > 0 && us == 0 {
			us = 1
		}
		return us
	default: // Config.withDefaults resolves def, so this is only a backstop.
		return DefaultTimeoutDefault.Microseconds()
	}
}
