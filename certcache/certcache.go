// Package certcache is an autocert.Cache (golang.org/x/crypto/acme/autocert)
// in the PostgreSQL database an application already runs, so every replica
// behind a load balancer shares its TLS certificates and its ACME account
// key: a certificate one replica obtained is served by all, and none asks
// the CA again.
//
//	certs, err := certcache.New(ctx, pool, nil)
//	m := &autocert.Manager{Prompt: autocert.AcceptTOS, HostPolicy: autocert.HostWhitelist("example.com"), Cache: certs}
//	srv := &http.Server{Addr: ":443", TLSConfig: m.TLSConfig()}
//
// # Never culled
//
// Certificates live in a table of their own, dbcache_certificates
// (migration 007), not in the cache table: the culler, the cache's Clear
// and its expiry sweep work on the cache table alone, so no MaxEntries,
// MaxBytes or MaxAge removes a certificate, and certificates take no room
// from the cache's entries under those limits. A removed certificate would
// be issued again, and issuing runs into the CA's rate limits. Entries leave
// the table only by Delete (autocert deletes its challenge tokens).
//
// # Errors autocert relies on
//
// Get returns autocert.ErrCacheMiss itself (not wrapped: autocert compares
// with ==) exactly when the database answered that the key has no row. Any
// other failure (a lost connection, a timeout, a value that does not open
// or is larger than Config.MaxBytes) is another error, never ErrCacheMiss:
// autocert takes a miss as leave to order a new certificate, or to make a
// new account key. Every call is bounded by Config.OpTimeout when its
// context has no deadline (autocert deletes with context.Background()).
//
// # Private keys
//
// The rows hold autocert's PEM: certificate chains and their private keys,
// and the ACME account key. Grant the table only to the role the servers
// use, or give Config.Sealer (encryption.Keyring is one) so the table, its
// WAL and its backups hold ciphertext.
package certcache

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"golang.org/x/crypto/acme/autocert"

	"github.com/dbcache/dbcache/internal/pgexec"
)

const (
	// TableName is the table migration 007 creates.
	TableName = "dbcache_certificates"

	// OpTimeoutDefault is the default for Config.OpTimeout, as dbcache's.
	OpTimeoutDefault = 5 * time.Second

	// MaxBytesDefault is the default for Config.MaxBytes: 1 MiB, a hundred
	// times a certificate chain with its key.
	MaxBytesDefault = 1 << 20

	// MaxKeyBytes is the longest stored key (Config.KeyPrefix and
	// autocert's key together), in bytes, as dbcache's.
	MaxKeyBytes = 2048
)

var (
	// ErrInvalidKey is returned for a key the table cannot hold: empty, a
	// NUL byte, invalid UTF-8, or more than MaxKeyBytes with the prefix.
	// Nothing is read or written.
	ErrInvalidKey = errors.New("certcache: invalid key")

	// ErrTooLarge is returned by Put for data larger than Config.MaxBytes
	// (after sealing), which is not written, and by Get for a stored value
	// larger than that, which is not read.
	ErrTooLarge = errors.New("certcache: value larger than Config.MaxBytes")

	// ErrNotMigrated is returned by New when the certificates table does
	// not exist: apply the migrations (007) first.
	ErrNotMigrated = errors.New("certcache: table dbcache_certificates not found (apply the migrations)")
)

// Sealer encrypts what Put stores and decrypts what Get reads, binding
// each value to its key (autocert's key, without Config.KeyPrefix), so a
// value copied under another key does not open. *encryption.Keyring is one.
type Sealer interface {
	Seal(key string, plaintext []byte) ([]byte, error)
	Open(key string, data []byte) ([]byte, error)
}

// Config configures a Cache. A nil *Config means all defaults.
type Config struct {
	// KeyPrefix is put before every key, so several autocert Managers (with
	// different ACME accounts, say) can share the table. Defaults to "".
	KeyPrefix string

	// MaxBytes is the largest value, as stored, that Put writes and Get
	// reads; larger is ErrTooLarge. It bounds what a crafted row can make
	// Get allocate. Defaults to MaxBytesDefault.
	MaxBytes int

	// OpTimeout bounds every call when its context has no deadline of its
	// own (a context with a deadline is used as it is). -1 means no bound
	// beyond the caller's context. Defaults to OpTimeoutDefault (5 s).
	OpTimeout time.Duration

	// Schema is the schema of the certificates table. Defaults to "",
	// which resolves the table through each connection's search_path
	// (behind PgBouncer in transaction pooling, name the schema here).
	Schema string

	// Sealer, when set, encrypts every value Put stores and decrypts every
	// value Get reads; a value that does not open is an error, never a
	// miss. Defaults to nil: values are stored as autocert gives them.
	Sealer Sealer
}

// Cache is an autocert.Cache. It is safe for concurrent use, by any number
// of processes sharing the table.
type Cache struct {
	cfg Config
	run *pgexec.Runner

	get, put, del string
}

var _ autocert.Cache = (*Cache)(nil)

// New returns a Cache over pool, whose database must have migration 007
// applied (ErrNotMigrated otherwise). It reads the session's default
// isolation, in one round trip bounded by OpTimeout; the pool stays the
// caller's.
func New(ctx context.Context, pool *pgxpool.Pool, cfg *Config) (*Cache, error) {
	var c Config
	if cfg != nil {
		c = *cfg
	}
	if pool == nil {
		return nil, errors.New("certcache: New needs a pool")
	}
	if c.OpTimeout == 0 {
		c.OpTimeout = OpTimeoutDefault
	}
	if c.MaxBytes == 0 {
		c.MaxBytes = MaxBytesDefault
	}
	var errs []error
	if !pgexec.ValidSchema(c.Schema) {
		errs = append(errs, fmt.Errorf("certcache: Config.Schema %q is not a valid schema name (letters, digits, _ and $, at most 63)", c.Schema))
	}
	if c.OpTimeout < -1 {
		errs = append(errs, fmt.Errorf("certcache: Config.OpTimeout %s is negative (-1 means no bound)", c.OpTimeout))
	}
	if c.MaxBytes < 0 {
		errs = append(errs, fmt.Errorf("certcache: Config.MaxBytes %d is negative", c.MaxBytes))
	}
	if p := pgexec.TextProblem(c.KeyPrefix); p != "" {
		errs = append(errs, fmt.Errorf("certcache: Config.KeyPrefix has %s", p))
	}
	if len(c.KeyPrefix) >= MaxKeyBytes {
		errs = append(errs, fmt.Errorf("certcache: Config.KeyPrefix is %d bytes, leaving no room for keys (MaxKeyBytes %d)", len(c.KeyPrefix), MaxKeyBytes))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	table := pgexec.Qualify(c.Schema, TableName)
	exists, iso, err := pgexec.TableExists(ctx, pool, table, c.OpTimeout)
	if err != nil {
		return nil, fmt.Errorf("certcache: %w", err)
	}
	if !exists {
		return nil, ErrNotMigrated
	}
	return &Cache{
		cfg: c,
		run: pgexec.New(pool, c.OpTimeout, pgexec.NeedsWrap(iso)),
		// The stored size first: octet_length of a bytea reads its header,
		// not the value (nor its TOAST), so a value over MaxBytes is refused
		// without being fetched.
		get: `SELECT octet_length(data), CASE WHEN octet_length(data) <= $2::int THEN data END FROM ` + table + ` WHERE key = $1::text`,
		put: `INSERT INTO ` + table + ` AS t (key, data) VALUES ($1::text, $2::bytea)
ON CONFLICT (key) DO UPDATE SET data = EXCLUDED.data, updated_at = EXCLUDED.updated_at`,
		del: `DELETE FROM ` + table + ` WHERE key = $1::text`,
	}, nil
}

// Get returns the data stored under key, or autocert.ErrCacheMiss when
// there is none.
func (c *Cache) Get(ctx context.Context, key string) ([]byte, error) {
	k, err := c.key(key)
	if err != nil {
		return nil, err
	}
	var size int
	var data []byte
	err = c.run.Read(ctx, c.get, []any{k, c.cfg.MaxBytes}, &size, &data)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return nil, autocert.ErrCacheMiss
	case err != nil:
		return nil, fmt.Errorf("certcache: get: %w", err)
	case data == nil:
		return nil, fmt.Errorf("%w: a stored value of %d bytes (MaxBytes %d)", ErrTooLarge, size, c.cfg.MaxBytes)
	}
	if c.cfg.Sealer != nil {
		if data, err = c.cfg.Sealer.Open(key, data); err != nil {
			return nil, fmt.Errorf("certcache: get: the stored value does not open: %w", err)
		}
	}
	return data, nil
}

// Put stores data under key, replacing what was there, in one statement
// that runs at READ COMMITTED whatever the session's default.
func (c *Cache) Put(ctx context.Context, key string, data []byte) error {
	k, err := c.key(key)
	if err != nil {
		return err
	}
	if c.cfg.Sealer != nil {
		if data, err = c.cfg.Sealer.Seal(key, data); err != nil {
			return fmt.Errorf("certcache: put: seal: %w", err)
		}
	}
	if data == nil {
		data = []byte{} // the column is NOT NULL; autocert's data is never empty anyway
	}
	if len(data) > c.cfg.MaxBytes {
		return fmt.Errorf("%w: %d bytes (MaxBytes %d)", ErrTooLarge, len(data), c.cfg.MaxBytes)
	}
	if _, err := c.run.Exec(ctx, c.put, k, data); err != nil {
		return fmt.Errorf("certcache: put: %w", err)
	}
	return nil
}

// Delete removes key's data; a key with none is no error.
func (c *Cache) Delete(ctx context.Context, key string) error {
	k, err := c.key(key)
	if err != nil {
		return err
	}
	if _, err := c.run.Exec(ctx, c.del, k); err != nil {
		return fmt.Errorf("certcache: delete: %w", err)
	}
	return nil
}

// key validates key and returns it with the prefix. The errors never quote
// the key.
func (c *Cache) key(key string) (string, error) {
	if key == "" {
		return "", fmt.Errorf("%w: empty", ErrInvalidKey)
	}
	if p := pgexec.TextProblem(key); p != "" {
		return "", fmt.Errorf("%w: it has %s", ErrInvalidKey, p)
	}
	k := c.cfg.KeyPrefix + key
	if len(k) > MaxKeyBytes {
		return "", fmt.Errorf("%w: %d bytes with the prefix, more than MaxKeyBytes (%d)", ErrInvalidKey, len(k), MaxKeyBytes)
	}
	return k, nil
}
