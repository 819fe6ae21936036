package dbcache_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync/atomic"
	"testing"

	"github.com/dbcache/dbcache/internal/benchpair"
	"github.com/dbcache/dbcache/internal/dbtest"
)

// qDeleteReturning is Delete's statement as it was before the liveness
// test moved out of its RETURNING clause into a query over a CTE (so that
// Citus, which refuses non-IMMUTABLE functions in RETURNING, accepts it):
// the baseline that shows the rewrite costs nothing on plain PostgreSQL.
const qDeleteReturning = `DELETE FROM "dbcache_entries" WHERE key = $1 RETURNING (expires IS NULL OR expires > statement_timestamp())`

// BenchmarkOpsDelete is BenchmarkOps's pair for Delete, whose statement is
// now a CTE (dbcache.Statements' "delete"), against the statement it
// replaced, each deleting a live row of its own:
//
//	delete        dbcache's Delete (new statement) beside raw pgx running
//	              the old one: x-raw is the whole cost of the change plus
//	              what dbcache adds, as in BenchmarkOps
//	delete_sql    raw pgx running the new statement beside raw pgx running
//	              the old one: the statements alone (x-raw 1 = same speed)
//
//	go test -run '^$' -bench 'Ops/delete' -benchtime 2000x ./dbcache/
func BenchmarkOpsDelete(b *testing.B) {
	env := newBenchEnv(b, "")
	newSQL := env.stmts["delete"]
	var runs atomic.Int64
	deleted := func(ok bool, err error) error {
		if err == nil && !ok {
			err = errors.New("deleted no live row")
		}
		return err
	}
	raw := func(sql, key string) func(ctx context.Context, i int) error {
		return func(ctx context.Context, i int) error {
			var ok bool
			return deleted(ok, env.pool.QueryRow(ctx, sql, ":1:"+key+strconv.Itoa(i)).Scan(&ok))
		}
	}
	for _, name := range []string{"delete", "delete_sql"} {
		for _, g := range []int{1, 16} {
			b.Run(fmt.Sprintf("%s/g=%d", name, g), func(b *testing.B) {
				// Rows of their own for each side and each run: b.N plus
				// runPair's warm-up of 2g operations.
				run := runs.Add(1)
				a, r := fmt.Sprintf("del%da", run), fmt.Sprintf("del%dr", run)
				dbtest.Exec(b, env.pool, `INSERT INTO dbcache_entries (key, value, expires)
SELECT ':1:' || p || i, $2::bytea, now() + interval '1 day'
FROM unnest($1::text[]) AS p, generate_series(0, $3 - 1) AS i`, []string{a, r}, env.value, b.N+2*g)
				op := benchOp{name: name, raw: raw(qDeleteReturning, r)}
				if name == "delete" {
					op.cache = func(ctx context.Context, i int) error {
						return deleted(env.cache.Delete(ctx, a+strconv.Itoa(i)))
					}
				} else {
					op.cache = raw(newSQL, a)
				}
				env.runPair(b, g, op)
				if l, ok := benchpair.LoadAverage(); ok {
					b.ReportMetric(l, "load1")
				}
			})
		}
	}
}
