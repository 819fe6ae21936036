package certcache_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"
	"golang.org/x/crypto/acme/autocert"

	"github.com/dbcache/dbcache/certcache"
	"github.com/dbcache/dbcache/encryption"
	"github.com/dbcache/dbcache/internal/dbtest"
)

func TestMain(m *testing.M) { dbtest.Main(m) }

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func newCache(t *testing.T, pool *pgxpool.Pool, cfg *certcache.Config) *certcache.Cache {
	t.Helper()
	c, err := certcache.New(ctxT(t), pool, cfg)
	require.NoError(t, err)
	return c
}

// stored reads a key's stored bytes, by SQL.
func stored(t *testing.T, pool *pgxpool.Pool, key string) []byte {
	t.Helper()
	var data []byte
	require.NoError(t, pool.QueryRow(context.Background(), `SELECT data FROM dbcache_certificates WHERE key = $1`, key).Scan(&data))
	return data
}

func certRows(t *testing.T, pool *pgxpool.Pool) int {
	t.Helper()
	var n int
	require.NoError(t, pool.QueryRow(context.Background(), `SELECT count(*) FROM dbcache_certificates`).Scan(&n))
	return n
}

// The autocert.Cache contract: a key never stored is ErrCacheMiss itself
// (autocert compares with ==); what Put stores Get returns, byte for byte;
// Put replaces; Delete removes, and deleting nothing is no error.
func TestGetPutDelete(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t)
	pool := dbtest.Pool(t)
	c := newCache(t, pool, nil)

	data, err := c.Get(ctx, "example.com")
	require.True(t, err == autocert.ErrCacheMiss, "want autocert.ErrCacheMiss itself, got %v", err)
	require.Nil(t, data)

	blob := append([]byte("-----BEGIN EC PRIVATE KEY-----\n"), 0, 0xff, 0xfe, '\n')
	require.NoError(t, c.Put(ctx, "example.com", blob))
	got, err := c.Get(ctx, "example.com")
	require.NoError(t, err)
	require.Equal(t, blob, got)

	require.NoError(t, c.Put(ctx, "example.com", []byte("renewed")))
	got, err = c.Get(ctx, "example.com")
	require.NoError(t, err)
	require.Equal(t, "renewed", string(got))

	// autocert's other keys: RSA certificates, tokens, the account key.
	for _, k := range []string{"example.com+rsa", "abc+token", "acme_account+key", "Example.com"} {
		require.NoError(t, c.Put(ctx, k, []byte(k)))
	}
	got, err = c.Get(ctx, "Example.com")
	require.NoError(t, err)
	require.Equal(t, "Example.com", string(got), "keys compare as bytes")

	require.NoError(t, c.Delete(ctx, "example.com"))
	_, err = c.Get(ctx, "example.com")
	require.True(t, err == autocert.ErrCacheMiss)
	require.NoError(t, c.Delete(ctx, "example.com"), "deleting nothing is no error")
	require.Equal(t, 4, certRows(t, pool))
}

// Bad input is a clear error that reads and writes nothing.
func TestBadInput(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t)
	pool := dbtest.Pool(t)
	c := newCache(t, pool, &certcache.Config{KeyPrefix: "p:", MaxBytes: 100})
	require.NoError(t, c.Put(ctx, "kept", []byte("v")))
	for _, key := range []string{"", "a\x00b", "a\xffb", strings.Repeat("k", certcache.MaxKeyBytes-1)} {
		_, err := c.Get(ctx, key)
		require.ErrorIs(t, err, certcache.ErrInvalidKey)
		require.False(t, err == autocert.ErrCacheMiss, "an invalid key is not a miss")
		require.ErrorIs(t, c.Put(ctx, key, []byte("v")), certcache.ErrInvalidKey)
		require.ErrorIs(t, c.Delete(ctx, key), certcache.ErrInvalidKey)
		if key != "" {
			require.NotContains(t, err.Error(), key, "the error never quotes the key")
		}
	}
	err := c.Put(ctx, "kept", bytes.Repeat([]byte("x"), 101))
	require.ErrorIs(t, err, certcache.ErrTooLarge)
	require.Equal(t, 1, certRows(t, pool))
	require.Equal(t, "v", string(stored(t, pool, "p:kept")), "nothing written")

	for _, cfg := range []certcache.Config{{Schema: "a b"}, {OpTimeout: -2}, {MaxBytes: -1}, {KeyPrefix: "\x00"}, {KeyPrefix: strings.Repeat("p", certcache.MaxKeyBytes)}} {
		_, err := certcache.New(ctx, pool, &cfg)
		require.ErrorContains(t, err, "Config.")
	}
	_, err = certcache.New(ctx, pool, &certcache.Config{Schema: "no_such_schema"})
	require.ErrorIs(t, err, certcache.ErrNotMigrated)
	_, err = certcache.New(ctx, nil, nil)
	require.Error(t, err)
}

// A stored value over MaxBytes (a crafted row: Put refuses to write one)
// is ErrTooLarge, never read: the server sends the size, not the value.
// Measured at a proxy between the two.
func TestCraftedLargeRowIsNotRead(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t)
	s := dbtest.NewSchema(t)
	s.Migrate(t)
	direct := s.Pool(t)
	dbtest.Exec(t, direct, `INSERT INTO dbcache_certificates (key, data) VALUES ('big', decode(repeat('ab', 8 << 20), 'hex'))`)
	cfg := s.PoolConfig(t)
	proxy := dbtest.NewProxy(t, net.JoinHostPort(cfg.ConnConfig.Host, strconv.Itoa(int(cfg.ConnConfig.Port))))
	cfg.ConnConfig.Host, cfg.ConnConfig.Port = "127.0.0.1", proxy.Port()
	cfg.MaxConns = 1
	c := newCache(t, dbtest.NewPool(t, cfg), nil)
	before := proxy.BytesFromServer()
	_, err := c.Get(ctx, "big")
	require.ErrorIs(t, err, certcache.ErrTooLarge)
	require.False(t, errors.Is(err, autocert.ErrCacheMiss), "too large is not a miss")
	require.ErrorContains(t, err, "8388608 bytes")
	require.Less(t, proxy.BytesFromServer()-before, int64(64<<10), "the 8 MiB value never crossed the wire")
}

// Certificates are never culled: a culler at the tightest limits it takes
// (one entry, a byte, the shortest maximum age, clearing the whole table
// when over) runs pass after pass over the cache table beside them, the
// cache writes and clears its own entries, and every certificate is still
// there, byte for byte, while the cache table is culled to nothing.
func TestNeverCulled(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t)
	pool := dbtest.Pool(t)
	certs := newCache(t, pool, nil)
	want := map[string][]byte{}
	for i := range 50 {
		k := fmt.Sprintf("host%d.example.com", i)
		want[k] = bytes.Repeat([]byte{byte(i)}, 4000+i)
		require.NoError(t, certs.Put(ctx, k, want[k]))
	}
	// Rows of the certificates table as old as can be, and expired-looking
	// entries in the cache table: nothing of the first may go.
	dbtest.Exec(t, pool, `UPDATE dbcache_certificates SET updated_at = now() - interval '10 years'`)
	culled := runTightCuller(t, pool, func(round int) {
		// The culler's work: cache entries, some old, some expired.
		dbtest.Exec(t, pool, `INSERT INTO dbcache_entries (key, value, expires, written_at)
			SELECT 'r' || $1::int || ':' || g, '\x00', CASE WHEN g % 2 = 0 THEN now() - interval '1 s' END, now() - interval '2 hours'
			FROM generate_series(1, 20) AS g`, round)
		// Autocert's work beside it.
		k := fmt.Sprintf("host%d.example.com", round%50)
		got, err := certs.Get(ctx, k)
		require.NoError(t, err)
		require.Equal(t, want[k], got)
		require.NoError(t, certs.Put(ctx, k, want[k]))
	})
	require.Positive(t, culled, "the culler removed cache entries")
	require.Equal(t, 50, certRows(t, pool))
	for k, v := range want {
		got, err := certs.Get(ctx, k)
		require.NoError(t, err, k)
		require.Equal(t, v, got, k)
	}
	require.Zero(t, dbtest.Count(t, pool), "the cache table beside them was culled")
}

// Errors are never misses: on a server that stops answering, and on one
// that is down, Get returns an error that is not autocert.ErrCacheMiss
// (which would make autocert order a certificate, or a new account key),
// and every call ends within its bound with a context that has none.
func TestFailuresAreNeverMisses(t *testing.T) {
	t.Parallel()
	// New itself, on a server that accepts connections and never answers.
	port := dbtest.SilentListener(t)
	silentCfg, err := pgxpool.ParseConfig(fmt.Sprintf("postgres://postgres@127.0.0.1:%d/x?sslmode=disable", port))
	require.NoError(t, err)
	silent := dbtest.NewPool(t, silentCfg)
	_, err = certcache.New(context.Background(), silent, &certcache.Config{OpTimeout: 300 * time.Millisecond})
	require.ErrorIs(t, err, context.DeadlineExceeded)

	s := dbtest.NewSchema(t)
	s.Migrate(t)
	cfg := s.PoolConfig(t)
	proxy := dbtest.NewProxy(t, net.JoinHostPort(cfg.ConnConfig.Host, strconv.Itoa(int(cfg.ConnConfig.Port))))
	cfg.ConnConfig.Host, cfg.ConnConfig.Port = "127.0.0.1", proxy.Port()
	cfg.MaxConns = 4
	cfg.ConnConfig.ConnectTimeout = 2 * time.Second
	c := newCache(t, dbtest.NewPool(t, cfg), &certcache.Config{OpTimeout: 300 * time.Millisecond})
	ctx := context.Background()
	require.NoError(t, c.Put(ctx, "example.com", []byte("cert")))

	for _, fault := range []struct {
		name       string
		start, end func()
	}{
		{"silent", proxy.Freeze, proxy.Thaw},
		{"down", proxy.Down, func() { proxy.Up(t) }},
	} {
		fault.start()
		var wg sync.WaitGroup
		for _, key := range []string{"example.com", "never-stored.example.com"} {
			wg.Go(func() {
				data, err := c.Get(ctx, key)
				if err == nil || errors.Is(err, autocert.ErrCacheMiss) || data != nil {
					t.Errorf("%s: Get(%q) = %q, %v: want an error that is not a miss", fault.name, key, data, err)
				}
			})
		}
		wg.Go(func() {
			if err := c.Put(ctx, "example.com", []byte("x")); err == nil {
				t.Errorf("%s: Put succeeded", fault.name)
			}
		})
		wg.Go(func() {
			if err := c.Delete(ctx, "example.com"); err == nil {
				t.Errorf("%s: Delete succeeded", fault.name)
			}
		})
		wg.Wait()
		fault.end()
	}
	data, err := c.Get(ctx, "example.com")
	require.NoError(t, err)
	// A Put cut off by the stopped server may have committed before the
	// connection dropped (its error cannot say): the entry is the stored
	// certificate or the Put's value, never anything else.
	require.Contains(t, []string{"cert", "x"}, string(data), "a failed write leaves the old value or its own")
}

// With a Sealer the table holds ciphertext bound to each key: the stored
// bytes are not the PEM, and a value copied under another key, or altered,
// is an error, never a miss and never another value.
func TestSealer(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t)
	pool := dbtest.Pool(t)
	ring, err := encryption.NewKeyring(encryption.Key{ID: 1, Secret: bytes.Repeat([]byte{7}, 32)})
	require.NoError(t, err)
	c := newCache(t, pool, &certcache.Config{Sealer: ring})
	pem := []byte("-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEI...\n-----END EC PRIVATE KEY-----\n")
	require.NoError(t, c.Put(ctx, "example.com", pem))
	require.False(t, bytes.Contains(stored(t, pool, "example.com"), []byte("PRIVATE KEY")), "the table holds ciphertext")
	got, err := c.Get(ctx, "example.com")
	require.NoError(t, err)
	require.Equal(t, pem, got)

	dbtest.Exec(t, pool, `INSERT INTO dbcache_certificates (key, data) SELECT 'evil.example.com', data FROM dbcache_certificates WHERE key = 'example.com'`)
	_, err = c.Get(ctx, "evil.example.com")
	require.ErrorIs(t, err, encryption.ErrDecrypt)
	require.False(t, errors.Is(err, autocert.ErrCacheMiss))

	dbtest.Exec(t, pool, `UPDATE dbcache_certificates SET data = overlay(data placing '\xff' from 30 for 1) WHERE key = 'example.com'`)
	_, err = c.Get(ctx, "example.com")
	require.ErrorIs(t, err, encryption.ErrDecrypt)

	plain := newCache(t, pool, nil)
	dbtest.Exec(t, pool, `INSERT INTO dbcache_certificates (key, data) VALUES ('plain.example.com', 'not sealed')`)
	_, err = c.Get(ctx, "plain.example.com")
	require.ErrorIs(t, err, encryption.ErrDecrypt, "a value that was never sealed does not open")
	got, err = plain.Get(ctx, "plain.example.com")
	require.NoError(t, err)
	require.Equal(t, "not sealed", string(got))
}
