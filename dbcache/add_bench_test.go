package dbcache_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
)

// BenchmarkOpsAddStatement compares Add's statement, whose ON CONFLICT test
// reads EXCLUDED.written_at (the statement's timestamp, through the
// column's default), with the form it replaced, which called
// statement_timestamp() there (refused by Citus on a distributed table):
// raw pgx on both sides, each Add over a live key, so the conflict clause
// runs every time. x-raw 1 means the same speed.
//
//	go test -run '^$' -bench 'OpsAddStatement' -benchtime 4000x ./dbcache/
func BenchmarkOpsAddStatement(b *testing.B) {
	env := newBenchEnv(b, "")
	newSQL := env.stmts["add"]
	oldSQL := strings.Replace(newSQL, "WHERE t.expires <= EXCLUDED.written_at", "WHERE t.expires <= statement_timestamp()", 1)
	if oldSQL == newSQL {
		b.Fatal("add's statement no longer has the clause this benchmark compares")
	}
	n := len(env.made)
	add := func(sql string) func(ctx context.Context, i int) error {
		return func(ctx context.Context, i int) error {
			var ok bool
			err := env.pool.QueryRow(ctx, sql, env.made[i%n], env.value, env.ttl).Scan(&ok)
			if errors.Is(err, pgx.ErrNoRows) {
				return nil // live: not stored, as expected
			}
			if err == nil {
				return errors.New("add over a live key stored")
			}
			return err
		}
	}
	op := benchOp{"add_live", add(newSQL), add(oldSQL)}
	for _, g := range []int{1, 16} {
		b.Run(fmt.Sprintf("g=%d", g), func(b *testing.B) { env.runPair(b, g, op) })
	}
}
