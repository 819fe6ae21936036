// Package citustest creates, on plain PostgreSQL, stand-ins of the Citus
// functions that read a distributed table's shards, for tests of the code
// that calls them (docs/scale-out.md#citus). Test-only.
//
// A stand-in has the signature and result shape of Citus's function and
// answers from the tables of its schema that are named as Citus names a
// table's shards (the table's name, an underscore and the shard id:
// dbcache_entries_102008), as a coordinator answers from the shards on
// its workers while its own table (the shell) stays empty. A table that
// has no such tables is its own single shard, with id 0: in forced Citus
// mode on a plain table, the stand-ins answer from the table itself.
package citustest

import (
	"context"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Execer is what CreateStandIns runs its statements on: a pool, a
// connection or a transaction.
type Execer interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
}

// The stand-ins, SCHEMA replaced by the schema's quoted name. Each is one
// statement.
var standIns = []string{
	// The shards of a table: (shard id, qualified name), ascending.
	`CREATE OR REPLACE FUNCTION SCHEMA.citustest_shards(table_name regclass, OUT shardid bigint, OUT shardname text)
RETURNS SETOF record LANGUAGE sql STABLE AS $f$
WITH t AS (SELECT relname, relnamespace FROM pg_class WHERE oid = table_name),
     s AS (
  SELECT substring(c.relname FROM length(t.relname) + 2)::bigint AS shardid,
         format('%I.%I', n.nspname, c.relname) AS shardname
    FROM pg_class c JOIN t ON c.relnamespace = t.relnamespace
    JOIN pg_namespace n ON n.oid = c.relnamespace
   WHERE c.relkind = 'r' AND left(c.relname, length(t.relname) + 1) = t.relname || '_'
     AND substring(c.relname FROM length(t.relname) + 2) ~ '^[0-9]{1,18}$')
SELECT shardid, shardname FROM s
UNION ALL
SELECT 0, table_name::regclass::text WHERE NOT EXISTS (SELECT 1 FROM s)
ORDER BY 1
$f$`,

	// run_command_on_shards(regclass, text): Citus runs format(command,
	// shard name) on each shard and returns the first column of the first
	// row as text, or the error's message with success false.
	`CREATE OR REPLACE FUNCTION SCHEMA.run_command_on_shards(table_name regclass, command text,
    OUT shardid bigint, OUT success boolean, OUT result text)
RETURNS SETOF record LANGUAGE plpgsql AS $f$
DECLARE
    s record;
BEGIN
    FOR s IN SELECT * FROM SCHEMA.citustest_shards(table_name) LOOP
        shardid := s.shardid;
        BEGIN
            EXECUTE format(command, s.shardname) INTO result;
            success := true;
        EXCEPTION WHEN OTHERS THEN
            success := false;
            result := SQLERRM;
        END;
        RETURN NEXT;
    END LOOP;
END
$f$`,

	// citus_relation_size(regclass): the main forks' size over the shards.
	`CREATE OR REPLACE FUNCTION SCHEMA.citus_relation_size(logicalrelid regclass)
RETURNS bigint LANGUAGE sql STABLE AS $f$
SELECT coalesce(sum(pg_relation_size(shardname::regclass)), 0)::bigint FROM SCHEMA.citustest_shards(logicalrelid)
$f$`,

	// citus_table_size(regclass): pg_table_size over the shards.
	`CREATE OR REPLACE FUNCTION SCHEMA.citus_table_size(logicalrelid regclass)
RETURNS bigint LANGUAGE sql STABLE AS $f$
SELECT coalesce(sum(pg_table_size(shardname::regclass)), 0)::bigint FROM SCHEMA.citustest_shards(logicalrelid)
$f$`,
}

// CreateStandIns creates in schema the stand-ins of Citus's
// run_command_on_shards(regclass, text) (setof shardid bigint, success
// boolean, result text), citus_relation_size(regclass) bigint and
// citus_table_size(regclass) bigint, and a helper, citustest_shards. A
// caller's search_path must name schema for unqualified calls to find
// them (pg_catalog, searched first, has none on plain PostgreSQL).
func CreateStandIns(ctx context.Context, db Execer, schema string) error {
	ident := pgx.Identifier{schema}.Sanitize()
	for _, sql := range standIns {
		if _, err := db.Exec(ctx, strings.ReplaceAll(sql, "SCHEMA", ident)); err != nil {
			return fmt.Errorf("citustest: create stand-ins in %s: %w", schema, err)
		}
	}
	return nil
}

// AddShard creates in schema a table named as Citus names table's shard
// with id shardid, with table's columns, defaults, constraints and
// indexes (CREATE TABLE … (LIKE … INCLUDING ALL)), and returns its
// qualified name. Rows written to it are what the stand-ins read for
// table once any shard exists.
func AddShard(ctx context.Context, db Execer, schema, table string, shardid int64) (string, error) {
	name := pgx.Identifier{schema, fmt.Sprintf("%s_%d", table, shardid)}.Sanitize()
	if _, err := db.Exec(ctx, `CREATE TABLE `+name+` (LIKE `+pgx.Identifier{schema, table}.Sanitize()+` INCLUDING ALL)`); err != nil {
		return "", fmt.Errorf("citustest: add shard %d of %s: %w", shardid, table, err)
	}
	return name, nil
}
