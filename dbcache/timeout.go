package dbcache

import "time"

// Timeout says when an entry expires. It has three kinds, as Django's timeout
// argument does:
//
//   - DefaultTimeout, the zero value: use the cache's Config.DefaultTimeout
//     (Django's DEFAULT_TIMEOUT). A zero Timeout never silently means forever.
//   - Forever: the entry never expires (Django's None).
//   - ExpiresIn(d): the entry expires d after the database's clock at the
//     time of the write. d <= 0 means it expires at once (Django's 0 and
//     negative timeouts): a Set with it stores nothing a Get can see, Add
//     still returns whether it would have stored, and Touch expires a live
//     entry.
//
// A Timeout is only an expiry: how an entry is read (stale-while-revalidate)
// is the reader's choice, Cache.GetOrRevalidate. The reads of a remaining
// lifetime (Cache.TTL, Cache.GetWithTTL) return Forever or ExpiresIn(d), so
// what they return can be passed to a write to keep an expiry.
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
	// kindRevalidate is the expiry GetOrRevalidate writes (fresh + stale)
	// and reads staleness from; no exported constructor makes one, so no
	// other operation ever sees it.
	kindRevalidate
)

var (
	// DefaultTimeout means the cache's configured default. It is the zero
	// Timeout.
	DefaultTimeout = Timeout{}

	// Forever means the entry never expires (stored as a NULL expiry).
	Forever = Timeout{kind: kindForever}
)

// ExpiresIn returns a Timeout of d from the time of the write, by the
// database's clock; d <= 0 expires at once.
func ExpiresIn(d time.Duration) Timeout { return Timeout{d: d, kind: kindTTL} }

// revalidate is the expiry of an entry GetOrRevalidate stores: fresh +
// stale from the write, with stale kept to read staleness by. Negative
// durations count as 0.
func revalidate(fresh, stale time.Duration) Timeout {
	return Timeout{d: max(fresh, 0), stale: max(stale, 0), kind: kindRevalidate}
}

// IsDefault reports whether t is DefaultTimeout.
func (t Timeout) IsDefault() bool { return t.kind == kindDefault }

// IsForever reports whether t is Forever.
func (t Timeout) IsForever() bool { return t.kind == kindForever }

// Duration returns d and true for ExpiresIn(d), and 0 and false for
// DefaultTimeout and Forever.
func (t Timeout) Duration() (time.Duration, bool) {
	switch t.kind {
	case kindTTL:
		return t.d, true
	case kindRevalidate:
		return t.d + t.stale, true
	}
	return 0, false
}

// staleFor returns the stale period of a GetOrRevalidate expiry, and 0 and
// false for any other.
func (t Timeout) staleFor() (time.Duration, bool) { return t.stale, t.kind == kindRevalidate }

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
