// Package notmigrated holds the one error every dbcache package returns, or
// wraps, when the schema is not migrated as far as the code needs: the cache
// table does not exist, or it predates a migration the code needs. dbcache
// exports it as dbcache.ErrNotMigrated and dbcache.ErrSchemaBehind; the
// culling and migrations packages' own sentinels for these cases
// (culling.ErrTableNotFound, culling.ErrMigrationNeeded,
// migrations.ErrNoTable) wrap them, so errors.Is(err, dbcache.ErrNotMigrated)
// holds whichever package found the schema short. It lives here, below all
// three, because none of them may import the others for it.
package notmigrated

import "errors"

// Err is dbcache.ErrNotMigrated: the schema is not migrated as far as the
// code needs. Alone, it means the cache table does not exist.
var Err = errors.New("dbcache: the schema is not migrated: run the migrations first (`dbcache migrate up`, or migrations.New(pool, nil).Up(ctx))")

// Behind is dbcache.ErrSchemaBehind: the cache table exists, but predates a
// migration the code needs. It wraps Err.
var Behind = New("dbcache: the schema is behind this version of dbcache: it lacks a migration this version needs (run `dbcache migrate up`, or migrations.New(pool, nil).Up(ctx))", Err)

// New returns a sentinel with its own message that also matches parent
// (errors.Is), without repeating parent's message.
func New(msg string, parent error) error { return &sentinel{msg: msg, parent: parent} }

type sentinel struct {
	msg    string
	parent error
}

func (s *sentinel) Error() string { return s.msg }
func (s *sentinel) Unwrap() error { return s.parent }
