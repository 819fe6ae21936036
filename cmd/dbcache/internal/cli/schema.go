package cli

import (
	"context"
	"errors"
	"fmt"

	"github.com/dbcache/dbcache/dbcache"
	"github.com/dbcache/dbcache/migrations"
)

// schemaBehindError is a schema behind the command (dbcache.ErrSchemaBehind)
// said in full: the version the schema is at, the one the command needs,
// and the command that fixes it.
type schemaBehindError struct {
	msg string
	err error
}

func (e *schemaBehindError) Error() string { return e.msg }
func (e *schemaBehindError) Unwrap() error { return e.err }

// maxAgeVersion is the migration cull --max-age needs: the written_at index.
const maxAgeVersion = 5

// explainSchema turns a schema behind the command into what is true of it:
// the library says which migration it lacks, and the command reads the
// version the schema is at (its migrations table) to say so. Any other
// error, or one whose version cannot be read, is returned as it is.
func (a *app) explainSchema(ctx context.Context, err error) error {
	if err == nil || !errors.Is(err, dbcache.ErrSchemaBehind) {
		return err
	}
	s := *a
	if name := shardOf(err); name != "" {
		for _, sh := range a.shards {
			if sh.name == name {
				s.g.databaseURL = sh.dsn
			}
		}
	} else if a.sharded() {
		return err
	}
	m, merr := s.migrator()
	if merr != nil {
		return err
	}
	bound := a.g.connectTimeout + OpTimeoutGrace + max(a.g.opTimeout, 0)
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), bound)
	defer cancel()
	v, dirty, verr := m.Version(rctx)
	if verr != nil || dirty {
		return err
	}
	need := a.needVersion
	if need == 0 {
		need = dbcache.SchemaVersion
	}
	where := "the schema on the search_path"
	if a.g.schema != "" {
		where = "schema " + a.g.schema
	}
	at := fmt.Sprintf("is at migration version %d", v)
	if v == 0 {
		at = "has a cache table but no migration recorded (dbcache_schema_migrations is missing or empty: set up by hand?)"
	}
	msg := fmt.Sprintf("%s %s, older than this dbcache needs (version %d; it carries migrations up to %d): run `dbcache migrate up%s`",
		where, at, need, migrations.Latest(), a.schemaFlag())
	return &schemaBehindError{msg: namedLine(err, msg), err: err}
}
