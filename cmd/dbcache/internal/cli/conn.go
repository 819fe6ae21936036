package cli

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strconv"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/spf13/cobra"

	"github.com/dbcache/dbcache/dbcache"
	"github.com/dbcache/dbcache/migrations"
)

// schemaRE is the schema names the library accepts; checking it here turns a
// bad --schema into a usage error before any connection is made.
var schemaRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_$]{0,62}$`)

// dsn is the connection string by the precedence rules: the flag, then
// DATABASE_URL, then "" (which makes pgx use the PG* variables and libpq's
// defaults).
func (a *app) dsn() string {
	if a.g.databaseURL != "" {
		return a.g.databaseURL
	}
	return a.cfg.Getenv(EnvDatabaseURL)
}

// poolConfig parses the connection string and applies the CLI's session
// settings. maxConns bounds the pool (bench needs one per worker).
func (a *app) poolConfig(maxConns int32) (*pgxpool.Config, error) {
	cfg, err := pgxpool.ParseConfig(a.dsn())
	if err != nil {
		return nil, err
	}
	cc := cfg.ConnConfig
	// A connect_timeout in the connection string is the user's choice and
	// beats the default; the flag, when given, beats both.
	if a.g.connectTimeoutSet || cc.ConnectTimeout == 0 {
		cc.ConnectTimeout = a.g.connectTimeout
	}
	// The timeout in force, for the hint on a connect timeout.
	a.g.connectTimeout = cc.ConnectTimeout
	if cc.RuntimeParams == nil {
		cc.RuntimeParams = map[string]string{}
	}
	if _, ok := cc.RuntimeParams["application_name"]; !ok {
		cc.RuntimeParams["application_name"] = ApplicationName
	}
	if _, ok := cc.RuntimeParams["statement_timeout"]; a.g.statementTimeoutSet || !ok {
		cc.RuntimeParams["statement_timeout"] = strconv.FormatInt(a.g.statementTimeout.Milliseconds(), 10)
	}
	cfg.MaxConns = max(maxConns, 1)
	cfg.MinConns = 0
	return cfg, nil
}

// openPool connects and checks the server answers, so a wrong or unreachable
// server fails here, within the connect timeout, with pgx's connect error
// (which report prints as one line).
func (a *app) openPool(ctx context.Context, maxConns int32) (*pgxpool.Pool, error) {
	cfg, err := a.poolConfig(maxConns)
	if err != nil {
		return nil, err
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, err
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, err
	}
	a.log.DebugContext(ctx, "connected", "host", cfg.ConnConfig.Host, "port", cfg.ConnConfig.Port,
		"database", cfg.ConnConfig.Database, "user", cfg.ConnConfig.User, "schema", a.g.schema)
	return pool, nil
}

// openCache connects and opens the cache with the command's key flags.
// The caller closes the pool.
func (a *app) openCache(ctx context.Context, cmd *cobra.Command, cf *cacheFlags, maxConns int32) (*dbcache.Cache, *pgxpool.Pool, error) {
	pool, err := a.openPool(ctx, maxConns)
	if err != nil {
		return nil, nil, err
	}
	cache, err := dbcache.New(ctx, pool, &dbcache.Config{
		Schema:    a.g.schema,
		KeyPrefix: cf.prefix,
		Logger:    a.log,
	})
	if err != nil {
		pool.Close()
		return nil, nil, err
	}
	// WithVersion rather than Config.Version, whose zero means "default":
	// --version 0 must mean version 0.
	if cmd.Flags().Changed("version") {
		cache = cache.WithVersion(cf.version)
	}
	return cache, pool, nil
}

// migrator returns a Migrator for the schema. It connects per call, with the
// same settings as the pool would.
func (a *app) migrator() (*migrations.Migrator, error) {
	cfg, err := a.poolConfig(1)
	if err != nil {
		return nil, err
	}
	return migrations.NewFromConnConfig(cfg.ConnConfig, &migrations.Config{Schema: a.g.schema, Logger: a.log})
}

// keyError classifies a cache operation's error: an invalid key is the
// user's mistake (usage); anything else is a failure.
func keyError(err error) error {
	if errors.Is(err, dbcache.ErrInvalidKey) {
		return &usageError{err: err}
	}
	return err
}

// miss prints what a miss prints and ends with ExitMiss: the JSON object on
// Out with --json, else a line on Err (Out stays empty, so `v=$(dbcache get
// k)` gets nothing).
func (a *app) miss(key string, jsonObj any) error {
	if a.g.json {
		if err := a.writeJSON(jsonObj); err != nil {
			return err
		}
		return errMissExit
	}
	fmt.Fprintf(a.errw, "dbcache: miss: no live entry for key %q\n", key)
	return errMissExit
}
