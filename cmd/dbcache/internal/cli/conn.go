package cli

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/spf13/cobra"

	"github.com/dbcache/dbcache/dbcache"
	"github.com/dbcache/dbcache/migrations"
)

// schemaRE is the schema names the library accepts (its Config.Schema
// check); checking it here turns a bad --schema into a usage error before any
// connection is made.
var schemaRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_$]{0,62}$`)

// parseSchema reads a --schema (or DBCACHE_SCHEMA) value as PostgreSQL reads
// an identifier: unquoted, it folds to lower case (MyCache is mycache, as in
// SET search_path TO MyCache); in double quotes it is taken as written
// ("MyCache", with "" for a quote). The library takes Config.Schema as the
// exact name, and accepts only ASCII letters, digits, _ and $, so a name
// PostgreSQL would need quotes for beyond case (spaces, non-ASCII letters)
// is refused here rather than failing later.
func parseSchema(s string) (string, error) {
	const rules = "ASCII letters, digits, _ and $, not starting with a digit, at most 63 bytes; " +
		`unquoted names fold to lower case, "Quoted" ones keep their case`
	name := s
	if strings.HasPrefix(s, `"`) {
		inner, ok := strings.CutSuffix(s[1:], `"`)
		if !ok || len(s) < 2 || strings.Contains(strings.ReplaceAll(inner, `""`, ""), `"`) {
			return "", fmt.Errorf("%q is not a valid schema name: an unterminated or badly quoted identifier", s)
		}
		name = strings.ReplaceAll(inner, `""`, `"`)
	} else {
		name = strings.ToLower(s)
	}
	if !schemaRE.MatchString(name) {
		return "", fmt.Errorf("%q is not a valid schema name (%s)", s, rules)
	}
	return name, nil
}

// schemaArg renders a schema name as a --schema value a shell passes back
// unchanged to parseSchema: bare when it is lower case, else quoted.
func schemaArg(name string) string {
	if name == strings.ToLower(name) {
		return name
	}
	return `'"` + name + `"'`
}

// schemaFlag is " --schema NAME" for the schema in use, or "" for the
// search_path's, for the commands a message suggests.
func (a *app) schemaFlag() string {
	if a.g.schema == "" {
		return ""
	}
	return " --schema " + schemaArg(a.g.schema)
}

// resolveSchema settles the schema: --schema, else DBCACHE_SCHEMA, read by
// PostgreSQL's identifier rules. An empty --schema means the search_path's
// schema, also when DBCACHE_SCHEMA is set. demo ignores DBCACHE_SCHEMA: it
// always works in a temporary schema of its own (and refuses --schema).
func (a *app) resolveSchema(cmd *cobra.Command) error {
	raw, from := a.g.schema, "--schema"
	if !cmd.Flags().Changed("schema") && cmd.Name() != "demo" {
		if v := a.cfg.Getenv(EnvSchema); v != "" {
			raw, from = v, EnvSchema
		}
	}
	a.g.schema = ""
	if raw == "" {
		return nil
	}
	name, err := parseSchema(raw)
	if err != nil {
		return usagef("%s %w", from, err)
	}
	a.g.schema = name
	return nil
}

// connectionConfigured reports whether the user named a server or a role:
// a connection string, or a libpq variable that picks one. Without any, pgx
// falls back to libpq's defaults (a local socket, the OS user name), whose
// failure ("role "root" does not exist") says nothing of what to set.
func (a *app) connectionConfigured() bool {
	if a.dsn() != "" || a.sharded() {
		return true
	}
	for _, v := range []string{"PGHOST", "PGHOSTADDR", "PGPORT", "PGDATABASE", "PGUSER", "PGSERVICE"} {
		if a.cfg.Getenv(v) != "" {
			return true
		}
	}
	return false
}

// dsn is the connection string by the precedence rules: the flag, then
// DATABASE_URL, then "" (which makes pgx use the PG* variables and libpq's
// defaults).
func (a *app) dsn() string {
	if a.g.databaseURL != "" {
		return a.g.databaseURL
	}
	return a.cfg.Getenv(EnvDatabaseURL)
}

// queryModeSet reports whether the connection string names pgx's query
// mode (default_query_exec_mode), which the command then leaves alone.
func (a *app) queryModeSet() bool {
	return strings.Contains(a.dsn(), "default_query_exec_mode")
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
	// application_name is a startup parameter PgBouncer accepts; the
	// statement timeout is not sent as one (PgBouncer refuses it) but set
	// once connected, and only on a direct connection (sessionSetup).
	if _, ok := cc.RuntimeParams["application_name"]; !ok {
		cc.RuntimeParams["application_name"] = ApplicationName
	}
	// The cache bounds each operation on the client too, for a server that
	// stops answering, and so does the connection itself (answerConn): a
	// little longer than the statement timeout, so a slow statement is
	// reported by the server, and not at all when the statement timeout is
	// off.
	a.g.opTimeout = -1
	var timeout *string
	if v, ok := cc.RuntimeParams["statement_timeout"]; a.g.statementTimeoutSet || !ok {
		ms := strconv.FormatInt(a.g.statementTimeout.Milliseconds(), 10)
		timeout = &ms
		a.g.statementTimeoutInForce = a.g.statementTimeout.String()
		if a.g.statementTimeout > 0 {
			a.g.opTimeout = a.g.statementTimeout + OpTimeoutGrace
		}
	} else {
		// PostgreSQL reads a bare number as milliseconds; other forms
		// ("1min") are left to the server, and the client waits the
		// default statement timeout's bound.
		timeout = &v
		a.g.statementTimeoutInForce = v
		a.g.opTimeout = StatementTimeoutDefault + OpTimeoutGrace
		if ms, err := strconv.ParseInt(v, 10, 64); err == nil {
			a.g.statementTimeoutInForce = (time.Duration(ms) * time.Millisecond).String() + " (from the connection string)"
			a.g.opTimeout = -1
			if ms > 0 {
				a.g.opTimeout = time.Duration(ms)*time.Millisecond + OpTimeoutGrace
			}
		}
	}
	delete(cc.RuntimeParams, "statement_timeout")
	sessionSetup(&cc.Config, a.g.opTimeout, timeout, a.conns)
	// The query mode: the connection string's, if it names one. Otherwise
	// one that works both directly and behind a transaction pooler (which
	// moves a client between server connections, so the named prepared
	// statements of pgx's default mode are lost or collide): a command runs
	// a few statements, and the mode makes no difference to it. bench,
	// which measures what an application's pool would do, asks for pgx's
	// default on a direct connection (useAppQueryMode).
	if !a.queryModeSet() && !a.g.pgxDefaultMode {
		cc.DefaultQueryExecMode = pgx.QueryExecModeCacheDescribe
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
	// Connecting is bounded by the connect timeout; the first query, on a
	// server that accepts and then stops answering, by the operations' bound.
	pingCtx, cancel := ctx, context.CancelFunc(func() {})
	if a.g.opTimeout > 0 {
		pingCtx, cancel = context.WithTimeout(ctx, a.g.connectTimeout+a.g.opTimeout)
	}
	defer cancel()
	if err := pool.Ping(pingCtx); err != nil {
		closePool(pool)
		return nil, err
	}
	a.connected = true
	a.log.DebugContext(ctx, "connected", "host", cfg.ConnConfig.Host, "port", cfg.ConnConfig.Port,
		"database", cfg.ConnConfig.Database, "user", cfg.ConnConfig.User, "schema", a.g.schema)
	return pool, nil
}

// closePoolWait bounds how long closing a pool may hold up the command.
const closePoolWait = time.Second

// closePool closes pool, waiting at most closePoolWait. Closing says goodbye
// to the server on every connection, and pgxpool gives each up to 15 s: on
// a server that stopped answering, the command would sit that long after
// its error before saying it. The process is about to exit, which closes
// the sockets anyway.
func closePool(pool *pgxpool.Pool) {
	done := make(chan struct{})
	go func() {
		pool.Close()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(closePoolWait):
	}
}

// openCache connects and opens the cache with the command's key flags.
// The caller closes the pool.
func (a *app) openCache(ctx context.Context, cmd *cobra.Command, cf *cacheFlags, maxConns int32) (*dbcache.Cache, *pgxpool.Pool, error) {
	if err := cf.validate(); err != nil {
		return nil, nil, err
	}
	pool, err := a.openPool(ctx, maxConns)
	if err != nil {
		return nil, nil, err
	}
	cache, err := dbcache.New(ctx, pool, a.cacheConfig(cf, a.g.opTimeout))
	if err != nil {
		closePool(pool)
		return nil, nil, err
	}
	// WithVersion rather than Config.Version, whose zero means "default":
	// --key-version 0 must mean version 0.
	if cmd.Flags().Changed("key-version") {
		cache = cache.WithVersion(cf.version)
	}
	return cache, pool, nil
}

// cacheConfig is the cache's configuration for the command's key flags,
// with opTimeout as the bound on each operation.
func (a *app) cacheConfig(cf *cacheFlags, opTimeout time.Duration) *dbcache.Config {
	return &dbcache.Config{
		Schema:    a.g.schema,
		KeyPrefix: cf.prefix,
		Logger:    a.log,
		// Django's memcached portability warnings (spaces, control
		// characters, over 250 characters) are about moving the key to
		// memcached one day. The command reads and writes PostgreSQL, which
		// stores such keys fine; warning on every admin command that names
		// one would be noise. Keys PostgreSQL cannot store are still
		// refused.
		KeyCheck: dbcache.KeyCheckOff,
		// The library's default bound (5 s) suits an application's
		// requests; an admin command's operations are bounded by
		// --statement-timeout, which may be longer (a large value, a
		// clear of a big table), with this as the backstop.
		OpTimeout: opTimeout,
	}
}

// migrator returns a Migrator for the schema. It connects per call, with the
// same settings as the pool would.
func (a *app) migrator() (*migrations.Migrator, error) {
	cfg, err := a.poolConfig(1)
	if err != nil {
		return nil, err
	}
	return migrations.NewFromConnConfig(cfg.ConnConfig, &migrations.Config{Schema: a.g.schema, Logger: a.log, Unlogged: a.unlogged})
}

// keyError classifies a cache operation's error: an invalid key is the
// user's mistake (usage), said in terms of the key as typed; anything else is
// a failure. The library's *dbcache.InvalidKeyError carries the caller's key
// and the reason; key, the key the command was given, stands in when the
// error does not (the backstop for a key the server refused).
func keyError(err error, key string) error { return namedKeyError(err, "key", key) }

// prefixError is keyError for the PREFIX of keys and delete-prefix.
func prefixError(err error, prefix string) error { return namedKeyError(err, "prefix", prefix) }

func namedKeyError(err error, noun, key string) error {
	if !errors.Is(err, dbcache.ErrInvalidKey) {
		return err
	}
	var ik *dbcache.InvalidKeyError
	if errors.As(err, &ik) {
		if ik.Key != "" {
			key = ik.Key
		}
		err = withCause(fmt.Sprintf("invalid %s %s: %s", noun, shortKey(key), ik.Reason), err)
	}
	return &usageError{err: err, code: CodeInvalidKey}
}

// shortKey quotes key for a message, cut to its first 80 bytes (at a
// character boundary) so a 2 KB key does not fill the screen.
func shortKey(key string) string {
	const show = 80
	if len(key) <= show {
		return strconv.Quote(key)
	}
	cut := show
	for cut > 0 && !utf8.RuneStart(key[cut]) {
		cut--
	}
	return strconv.Quote(key[:cut]) + "…"
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

// useAppQueryMode makes the command's pools use pgx's default query mode
// (cache_statement), as an application's pool with the same connection
// string would, when every server is reached directly; behind a pooler
// that mode loses its prepared statements, and the command keeps its own.
// It connects once to each server to find out. bench calls it: it measures
// what the application would see.
func (a *app) useAppQueryMode(ctx context.Context) error {
	if a.queryModeSet() {
		return nil
	}
	dsns := []string{a.g.databaseURL}
	if a.sharded() {
		dsns = dsns[:0]
		for _, sh := range a.shards {
			dsns = append(dsns, sh.dsn)
		}
	}
	for _, dsn := range dsns {
		s := *a
		s.g.databaseURL = dsn
		cfg, err := s.poolConfig(1)
		if err != nil {
			return err
		}
		conn, err := pgx.ConnectConfig(ctx, cfg.ConnConfig)
		if err != nil {
			return err
		}
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), closePoolWait)
		_ = conn.Close(cctx)
		cancel()
	}
	a.g.pgxDefaultMode = !a.conns.pooled.Load()
	return nil
}
