package culling

import (
	"context"
	"errors"
	"fmt"
	"math"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// SizeEstimate is a cache's size in bytes as Config.MaxBytes counts it: for
// every entry, its key and value as stored (after compression, in the table
// or its TOAST table) plus RowOverhead.
type SizeEstimate struct {
	// Bytes is the estimated size.
	Bytes int64
	// Exact reports that the sample covered every page of the table, so
	// Bytes is the exact size of the rows the sample saw.
	Exact bool
	// Rows is the entry count the estimate scales the sample by.
	Rows int64
	// SampledRows is how many rows the sample read.
	SampledRows int64
}

// EstimateSize estimates the size of the cache in schema ("" for the
// pool's search_path) as a pass does, reading samplePages pages (at most;
// SizeSamplePagesDefault when 0) and PostgreSQL's statistics, with the
// table's live-row statistic as the entry count. It reads memory and a
// sample, never the whole table (see docs/culling.md for the error).
// Returns ErrTableNotFound when the cache table is missing.
func EstimateSize(ctx context.Context, pool *pgxpool.Pool, schema string, samplePages int) (*SizeEstimate, error) {
	if pool == nil {
		return nil, errors.New("culling: pool is nil")
	}
	if schema != "" && !schemaRE.MatchString(schema) {
		return nil, fmt.Errorf("culling: schema %q is not a valid schema name", schema)
	}
	if samplePages <= 0 {
		samplePages = SizeSamplePagesDefault
	}
	table := qualify(schema, cacheTable)
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return nil, fmt.Errorf("culling: acquire a connection: %w", err)
	}
	defer conn.Release()
	citus, err := detectCitus(ctx, conn.Conn(), table)
	if err != nil {
		return nil, err
	}
	return estimateSizeForms(ctx, conn.Conn(), table, samplePages, citus)
}

// estimateSizeForms is EstimateSize in the plain forms or the Citus forms.
func estimateSizeForms(ctx context.Context, conn *pgx.Conn, table string, samplePages int, citus bool) (*SizeEstimate, error) {
	rows, err := estimateRows(ctx, conn, table, citus)
	if err != nil {
		return nil, classify(fmt.Errorf("culling: read the table's row estimate: %w", err))
	}
	est, err := estimateSize(ctx, conn, table, rows, samplePages, nil, citus)
	return est, classify(err)
}

// estimateRows is the table's live-row statistic (sqlEstimate), or with
// citus the sum of its shards' (sqlCitusEstimate).
func estimateRows(ctx context.Context, conn *pgx.Conn, table string, citus bool) (int64, error) {
	var rows int64
	if !citus {
		_, err := runTx(ctx, conn, nil, sqlEstimate, []any{table}, func(r pgx.Row) error { return r.Scan(&rows) })
		return rows, err
	}
	var (
		ok  bool
		msg string
	)
	if _, err := runTx(ctx, conn, nil, sqlCitusEstimate, []any{table, sqlCitusShardLiveRows}, func(r pgx.Row) error {
		return r.Scan(&rows, &ok, &msg)
	}); err != nil {
		return 0, err
	}
	return rows, shardAnswers(ok, msg)
}

// estimateSize is the size estimate over rows entries. It samples
// samplePages of the table's pages (TABLESAMPLE SYSTEM; every page of a
// table that small) and splits each sampled row in two:
//
//   - the bytes it takes in the table's own pages (key, an inline value or
//     the 18-byte pointer to an out-of-line one, RowOverhead): rows are at
//     most ~2 kB there, so a sample of a few thousand rows measures their
//     mean to a few percent, and the estimate is rows × that mean;
//   - the bytes of an out-of-line value, in the TOAST table: few rows can
//     hold most of the bytes (a 1 MB value among 100 B ones), which a
//     sample of rows estimates badly (±40% measured), so these are counted
//     from the TOAST table's live chunks as PostgreSQL's statistics have
//     them (chunk size × chunks), less the space values leave unused in
//     their last chunk, estimated from the sample.
//
// A table no larger than the sample is read whole: the sum is exact. asOf,
// when set, leaves out rows that had expired by then (a dry run's).
func estimateSize(ctx context.Context, conn *pgx.Conn, table string, rows int64, samplePages int, asOf any, citus bool) (*SizeEstimate, error) {
	var pages, chunks, blockSize int64
	q, args := sqlSizeInfo, []any{table}
	var (
		ok  = true
		msg string
	)
	scan := func(r pgx.Row) error { return r.Scan(&pages, &chunks, &blockSize) }
	if citus {
		q, args = sqlCitusSizeInfo, []any{table, sqlCitusShardToastChunks}
		scan = func(r pgx.Row) error { return r.Scan(&pages, &chunks, &blockSize, &ok, &msg) }
	}
	_, err := runTx(ctx, conn, nil, q, args, scan)
	if err == nil {
		err = shardAnswers(ok, msg)
	}
	if err != nil {
		if errors.Is(err, pgx.ErrNoRows) {
			return nil, fmt.Errorf("%w: %s", ErrTableNotFound, table)
		}
		return nil, fmt.Errorf("culling: read the table's size: %w", err)
	}
	// TOAST_TUPLE_THRESHOLD and TOAST_MAX_CHUNK_SIZE, as PostgreSQL
	// derives them from the block size: 2032 and 1996 for 8 kB blocks.
	threshold := ((blockSize - 40) / 4) &^ 7
	chunk := threshold - 36
	pct := 100.0
	if pages > int64(samplePages) {
		pct = 100 * float64(samplePages) / float64(pages)
	}
	var (
		n                 int64
		inline, waste, sz float64
	)
	if _, err := runTx(ctx, conn, nil, fmt.Sprintf(sqlSizeSample, table), []any{pct, chunk, threshold, asOf},
		func(r pgx.Row) error { return r.Scan(&n, &inline, &waste, &sz) }); err != nil {
		return nil, fmt.Errorf("culling: sample the table's rows: %w", err)
	}
	est := &SizeEstimate{Rows: rows, SampledRows: n}
	switch {
	case pct >= 100:
		est.Bytes, est.Exact, est.Rows = int64(sz), true, n
	case n == 0:
		// Nothing in the sampled pages (a table of mostly empty pages):
		// the rows' overhead and the TOAST chunks are what is known.
		est.Bytes = rows*RowOverhead + chunks*chunk
	default:
		perRow := (inline - waste) / float64(n)
		est.Bytes = max(int64(math.Round(float64(rows)*perRow))+chunks*chunk, 0)
	}
	return est, nil
}

// estimateSize is the pass's: over Count rows, excluding expired rows in a
// dry run (a pass has swept them).
func (p *pass) estimateSize() (*SizeEstimate, error) {
	var asOf any
	if p.dry {
		asOf = p.asOf
	}
	var est *SizeEstimate
	err := p.stmt(p.work, func(ctx context.Context) error {
		var err error
		est, err = estimateSize(ctx, p.work.Conn.Conn(), p.c.table, p.res.Count, p.c.cfg.SizeSamplePages, asOf, p.citus)
		return err
	})
	return est, err
}
