package culling

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// PassRecord is the last completed pass as recorded in the state table, for
// a process other than the one that ran it (the CLI's stats command). Times
// and ages come from the database clock.
type PassRecord struct {
	// Count is the rows the last pass counted after its sweep.
	Count int64
	// CountExact reports whether Count was exact rather than estimated.
	CountExact bool
	// Culled is the rows the last pass culled.
	Culled int64
	// ExpiredRemoved is the expired rows the last pass removed.
	ExpiredRemoved int64
	// Remaining is Count minus Culled.
	Remaining int64

	// Duration is how long the last pass took.
	Duration time.Duration
	// FinishedAt is when the last pass ended.
	FinishedAt time.Time
	// LastCullAt is when a pass last culled (removed live rows because the
	// table was over MaxEntries); zero if none ever did.
	LastCullAt time.Time
	// Passes counts every recorded pass.
	Passes int64
	// Runner names the process that ran the last pass: host:pid.
	Runner string
	// SinceLastCull is the time since LastCullAt; zero if none ever culled.
	SinceLastCull time.Duration
	// SinceLastPass is the time since FinishedAt.
	SinceLastPass time.Duration
	// StartedAt is when the last pass began.
	StartedAt time.Time
	// TotalCulled sums Culled over every recorded pass.
	TotalCulled int64
	// TotalExpiredRemoved sums ExpiredRemoved over every recorded pass.
	TotalExpiredRemoved int64

	// The fields below need migration 004; on an older schema they are
	// zero and Limits is false.

	// AgedOut is the rows the last pass removed for being older than
	// MaxAge; TotalAgedOut sums it over every recorded pass.
	AgedOut      int64
	TotalAgedOut int64
	// CulledBytes is the size of the rows the last pass culled.
	CulledBytes int64
	// Limits reports that the record holds the limits below.
	Limits bool
	// MaxAge, MaxBytes and MaxEntries are the limits the last pass
	// enforced; 0 for none (MaxEntries: NoLimit).
	MaxAge     time.Duration
	MaxBytes   int64
	MaxEntries int64
	// Size is the size the last pass estimated after its sweep; 0 when it
	// had no MaxBytes.
	Size int64
}

// LastPass reads the last completed pass over the cache table in schema
// ("" for the pool's search_path). Returns ErrNoPass when no pass has been
// recorded and ErrTableNotFound when the state table (migration 002) is
// missing.
func LastPass(ctx context.Context, pool *pgxpool.Pool, schema string) (*PassRecord, error) {
	if pool == nil {
		return nil, errors.New("culling: pool is nil")
	}
	if schema != "" && !schemaRE.MatchString(schema) {
		return nil, fmt.Errorf("culling: schema %q is not a valid schema name", schema)
	}
	state := qualify(schema, StateTable)
	var (
		r          PassRecord
		dur, since float64
		lastCull   *time.Time
		sinceCull  *float64
	)
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return nil, fmt.Errorf("culling: acquire a connection: %w", err)
	}
	defer conn.Release()
	var (
		size, maxEntries, maxBytes *int64
		maxAge                     *float64
	)
	_, err = runTx(ctx, conn.Conn(), nil, fmt.Sprintf(sqlLastPassV4, state), nil, func(row pgx.Row) error {
		return row.Scan(
			&r.StartedAt, &r.FinishedAt, &dur, &since,
			&r.ExpiredRemoved, &r.Culled, &r.Count, &r.CountExact, &r.Remaining,
			&lastCull, &sinceCull,
			&r.Passes, &r.TotalExpiredRemoved, &r.TotalCulled, &r.Runner,
			&r.AgedOut, &r.TotalAgedOut, &size, &r.CulledBytes, &maxEntries, &maxBytes, &maxAge)
	})
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "42703" { // undefined_column: no migration 004
		_, err = runTx(ctx, conn.Conn(), nil, fmt.Sprintf(sqlLastPass, state), nil, func(row pgx.Row) error {
			return row.Scan(
				&r.StartedAt, &r.FinishedAt, &dur, &since,
				&r.ExpiredRemoved, &r.Culled, &r.Count, &r.CountExact, &r.Remaining,
				&lastCull, &sinceCull,
				&r.Passes, &r.TotalExpiredRemoved, &r.TotalCulled, &r.Runner)
		})
	} else if err == nil {
		r.Limits = true
		r.MaxEntries = NoLimit
		if maxEntries != nil {
			r.MaxEntries = *maxEntries
		}
		if maxBytes != nil {
			r.MaxBytes = *maxBytes
		}
		if maxAge != nil {
			r.MaxAge = seconds(*maxAge)
		}
		if size != nil {
			r.Size = *size
		}
	}
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return nil, ErrNoPass
	case errors.As(err, &pgErr) && pgErr.Code == "42P01": // undefined_table
		return nil, fmt.Errorf("%w: %s", ErrTableNotFound, state)
	case err != nil:
		return nil, fmt.Errorf("culling: read the last pass: %w", err)
	}
	r.Duration = seconds(dur)
	r.SinceLastPass = seconds(since)
	if lastCull != nil {
		r.LastCullAt = *lastCull
	}
	if sinceCull != nil {
		r.SinceLastCull = seconds(*sinceCull)
	}
	return &r, nil
}

func seconds(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }
