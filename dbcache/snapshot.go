package dbcache

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// Reads that also say what they could see: the snapshot their statement read
// with. A layer that keeps copies of what it reads (the near cache) needs it
// to prove that a copy is not older than a change it has been told of: the
// change's transaction is in the snapshot's past, or the copy is not kept.

// SnapshotReader is an optional capability of a Store, found by type
// assertion: reads that also return the snapshot of the statement that read
// them. *Cache implements it; a Store over several databases cannot (a
// snapshot belongs to one server).
type SnapshotReader interface {
	// GetWithSnapshot is GetWithTTL that also returns the snapshot its
	// statement read with. On ErrMiss the snapshot is still the
	// statement's (zero when a fail-open Cache swallowed an error); on any
	// other error it is zero.
	GetWithSnapshot(ctx context.Context, key string) ([]byte, Timeout, Snapshot, error)
	// GetEntryWithSnapshot is GetWithSnapshot that returns the entry with
	// its Token (CompareAndSwapper), for a layer whose copies carry it.
	GetEntryWithSnapshot(ctx context.Context, key string) (Entry, Snapshot, error)
	// GetManyWithSnapshot reads the live entries among keys, each with its
	// remaining lifetime, in one statement, and returns that statement's
	// snapshot (zero when a fail-open Cache swallowed an error and
	// returned no entry).
	GetManyWithSnapshot(ctx context.Context, keys []string) (map[string]Entry, Snapshot, error)
}

var _ SnapshotReader = (*Cache)(nil)

// The snapshot-carrying reads, written out as queries.go writes every
// statement (TABLE is the table's quoted name). pg_current_snapshot() is
// the statement's active snapshot, the very one its scan reads with, at
// READ COMMITTED (a new one per statement) and in a caller's REPEATABLE
// READ transaction (the transaction's) alike. The entry is LEFT JOINed to
// a one-row subquery so a miss still returns the snapshot.
const (
	// The snapshot, then the value, its remaining lifetime in microseconds
	// (NULL for never), whether a live entry was found and its token.
	qGetSnapshot = `SELECT pg_current_snapshot()::text, e.value, (extract(epoch FROM e.expires - statement_timestamp()) * 1000000)::bigint, e.key IS NOT NULL,
  coalesce(e.token, 0)
FROM (SELECT 1) AS one
LEFT JOIN TABLE AS e ON e.key = $1 AND (e.expires IS NULL OR e.expires > statement_timestamp())`

	// The snapshot on every row, then each live entry's key, value,
	// remaining lifetime and token; one row with a NULL key when none is
	// found.
	qGetManySnapshot = `SELECT pg_current_snapshot()::text, e.key, e.value, (extract(epoch FROM e.expires - statement_timestamp()) * 1000000)::bigint,
  coalesce(e.token, 0)
FROM (SELECT 1) AS one
LEFT JOIN TABLE AS e ON e.key = ANY($1::text[]) AND (e.expires IS NULL OR e.expires > statement_timestamp())`
)

// Entry is a value with its remaining lifetime, as GetWithTTL returns them,
// and its Token (see CompareAndSwapper).
type Entry struct {
	Value []byte
	TTL   Timeout
	Token Token
}

// Snapshot is PostgreSQL's pg_snapshot of a statement: which transactions
// had ended (committed or rolled back) when the statement began, as 64-bit
// transaction ids (xid8, epoch included). Xmin is the oldest transaction
// still running then, Xmax one past the newest that had ended, and Xip the
// running ones in between, in increasing order. The zero Snapshot is none.
type Snapshot struct {
	Xmin, Xmax uint64
	Xip        []uint64
}

// IsZero reports whether s is no snapshot.
func (s Snapshot) IsZero() bool { return s.Xmax == 0 }

// Ended reports whether transaction xid had ended when the snapshot was
// taken: pg_visible_in_snapshot(xid, s). A committed transaction that ended
// is visible to the statement; one that had not may have committed in the
// WAL (its changes decoded, its commit flushed) and still be invisible, as
// while it waits for a synchronous standby. A snapshot taken later sees
// every transaction an earlier one saw ended.
func (s Snapshot) Ended(xid uint64) bool {
	if xid < s.Xmin {
		return true
	}
	if xid >= s.Xmax {
		return false
	}
	_, found := slices.BinarySearch(s.Xip, xid)
	return !found
}

// Includes reports whether every transaction o saw ended, s saw ended too:
// true when s was taken after o (PostgreSQL's snapshots only move forward),
// false for a snapshot that may be older. The zero Snapshot includes
// nothing and is included by every snapshot.
func (s Snapshot) Includes(o Snapshot) bool {
	if o.IsZero() {
		return true
	}
	if s.IsZero() || s.Xmax < o.Xmax || s.Xmin < o.Xmin {
		return false
	}
	// A transaction s saw running below o's Xmax must have been running
	// for o too.
	for _, x := range s.Xip {
		if x >= o.Xmax {
			break
		}
		if _, found := slices.BinarySearch(o.Xip, x); !found {
			return false
		}
	}
	return true
}

// String is the snapshot in pg_snapshot's text form, xmin:xmax:xip,...
func (s Snapshot) String() string {
	var b strings.Builder
	b.WriteString(strconv.FormatUint(s.Xmin, 10))
	b.WriteByte(':')
	b.WriteString(strconv.FormatUint(s.Xmax, 10))
	b.WriteByte(':')
	for i, x := range s.Xip {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(strconv.FormatUint(x, 10))
	}
	return b.String()
}

// maxSnapshotXip bounds the running transactions a snapshot may list
// (PostgreSQL lists at most one per connection, so a few thousand at
// most): a reply longer than that is not a snapshot.
const maxSnapshotXip = 1 << 16

// ParseSnapshot parses pg_snapshot's text form, xmin:xmax:xip,... It
// refuses anything else: non-numbers, xmin > xmax, running ids out of
// [xmin, xmax) or out of order.
func ParseSnapshot(text string) (Snapshot, error) {
	bad := func(why string) (Snapshot, error) {
		return Snapshot{}, fmt.Errorf("dbcache: %q is not a pg_snapshot: %s", truncate(text, 64), why)
	}
	parts := strings.SplitN(text, ":", 4)
	if len(parts) != 3 {
		return bad("want xmin:xmax:xip")
	}
	xmin, err1 := strconv.ParseUint(parts[0], 10, 64)
	xmax, err2 := strconv.ParseUint(parts[1], 10, 64)
	if err1 != nil || err2 != nil || xmin > xmax || xmax == 0 {
		return bad("xmin and xmax must be numbers, xmin <= xmax, xmax > 0")
	}
	s := Snapshot{Xmin: xmin, Xmax: xmax}
	if parts[2] == "" {
		return s, nil
	}
	if strings.Count(parts[2], ",") >= maxSnapshotXip {
		return bad("too many running transactions")
	}
	for _, f := range strings.Split(parts[2], ",") {
		x, err := strconv.ParseUint(f, 10, 64)
		if err != nil || x < xmin || x >= xmax || (len(s.Xip) > 0 && x <= s.Xip[len(s.Xip)-1]) {
			return bad("running ids must be numbers in [xmin, xmax), increasing")
		}
		s.Xip = append(s.Xip, x)
	}
	return s, nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// GetWithSnapshot is GetWithTTL that also returns the snapshot its
// statement read with (see SnapshotReader): the value, its remaining
// lifetime and pg_current_snapshot() come from one statement, so the
// snapshot is exactly the one the row was read with.
func (c *Cache) GetWithSnapshot(ctx context.Context, key string) ([]byte, Timeout, Snapshot, error) {
	e, snap, err := c.GetEntryWithSnapshot(ctx, key)
	return e.Value, e.TTL, snap, err
}

// GetEntryWithSnapshot is GetWithSnapshot that returns the entry with its
// Token, read in the same statement.
func (c *Cache) GetEntryWithSnapshot(ctx context.Context, key string) (_ Entry, _ Snapshot, err error) {
	ctx, tr := c.trace(ctx, OpGet, 1)
	if tr != nil {
		defer func() { tr.read(err) }()
	}
	if err := c.checkOpen(); err != nil {
		return Entry{}, Snapshot{}, err
	}
	k, err := c.key(ctx, key)
	if err != nil {
		return Entry{}, Snapshot{}, err
	}
	ctx, cancel := c.bound(ctx)
	defer cancel()
	var (
		snapText string
		v        []byte
		us       *int64
		found    bool
		tok      int64
	)
	if err := c.db.QueryRow(ctx, c.q.getSnapshot, k).Scan(&snapText, &v, &us, &found, &tok); err != nil {
		if c.onPool() && c.failOpen(ctx, "get", err) {
			return Entry{}, Snapshot{}, ErrMiss
		}
		return Entry{}, Snapshot{}, c.wrapErr("get", err)
	}
	snap, err := ParseSnapshot(snapText)
	if err != nil {
		return Entry{}, Snapshot{}, err
	}
	if !found {
		return Entry{}, snap, ErrMiss
	}
	if us == nil {
		return Entry{Value: nonNil(v), TTL: Forever, Token: Token(tok)}, snap, nil
	}
	return Entry{Value: nonNil(v), TTL: ExpiresIn(time.Duration(max(*us, 1)) * time.Microsecond), Token: Token(tok)}, snap, nil
}

// GetManyWithSnapshot reads the live entries among keys with their
// remaining lifetimes in one statement and returns its snapshot (see
// SnapshotReader). Keys absent or expired are left out, as GetMany leaves
// them.
func (c *Cache) GetManyWithSnapshot(ctx context.Context, keys []string) (out map[string]Entry, _ Snapshot, err error) {
	ctx, tr := c.trace(ctx, OpGetMany, len(keys))
	if tr != nil {
		defer func() { tr.many(len(keys), len(out), err) }()
	}
	if err := c.checkOpen(); err != nil {
		return nil, Snapshot{}, err
	}
	ks, err := c.keys(ctx, keys)
	if err != nil {
		return nil, Snapshot{}, err
	}
	out = make(map[string]Entry, len(keys))
	ctx, cancel := c.bound(ctx)
	defer cancel()
	rows, err := c.db.Query(ctx, c.q.getManySnapshot, ks.made)
	if err != nil {
		if c.degrade(ctx, "get_many", err) {
			return map[string]Entry{}, Snapshot{}, nil
		}
		return nil, Snapshot{}, c.wrapErr("get_many", err)
	}
	var (
		snapText string
		k        *string
		v        []byte
		us       *int64
		tok      int64
	)
	_, err = pgx.ForEachRow(rows, []any{&snapText, &k, &v, &us, &tok}, func() error {
		if k == nil {
			return nil // no key found: the one row that carries the snapshot
		}
		i, ok := ks.index[*k]
		if !ok {
			return nil
		}
		ttl := Forever
		if us != nil {
			ttl = ExpiresIn(time.Duration(max(*us, 1)) * time.Microsecond)
		}
		out[ks.first[i]] = Entry{Value: nonNil(v), TTL: ttl, Token: Token(tok)}
		for _, orig := range ks.more[*k] {
			out[orig] = Entry{Value: append([]byte{}, v...), TTL: ttl, Token: Token(tok)}
		}
		return nil
	})
	if err != nil {
		if c.degrade(ctx, "get_many", err) {
			return map[string]Entry{}, Snapshot{}, nil
		}
		return nil, Snapshot{}, c.wrapErr("get_many", err)
	}
	if snapText == "" {
		return nil, Snapshot{}, errors.New("dbcache: get_many: the statement returned no snapshot")
	}
	snap, err := ParseSnapshot(snapText)
	if err != nil {
		return nil, Snapshot{}, err
	}
	return out, snap, nil
}
