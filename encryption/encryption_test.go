package encryption_test

import (
	"bytes"
	"context"
	"errors"
	"go/parser"
	"go/token"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dbcache/dbcache/codec"
	"github.com/dbcache/dbcache/dbcache"
	"github.com/dbcache/dbcache/encryption"
	"github.com/dbcache/dbcache/internal/dbtest"
	"github.com/dbcache/dbcache/typed"
)

func TestMain(m *testing.M) { dbtest.Main(m) }

func secret(b byte, n int) []byte { return bytes.Repeat([]byte{b}, n) }

func ring(t testing.TB, keys ...encryption.Key) *encryption.Keyring {
	t.Helper()
	kr, err := encryption.NewKeyring(keys...)
	require.NoError(t, err)
	return kr
}

func requireDecrypt(t *testing.T, err error, reason string) {
	t.Helper()
	require.ErrorIs(t, err, encryption.ErrDecrypt)
	var de *encryption.DecryptError
	require.ErrorAs(t, err, &de)
	require.Equal(t, reason, de.Reason)
	require.Equal(t, "decrypt", dbcache.ErrorCode(err), "what telemetry records of it")
}

func TestRoundTripAndRotation(t *testing.T) {
	t.Parallel()
	k1 := encryption.Key{ID: 1, Secret: secret(1, 32)}
	k2 := encryption.Key{ID: 2, Secret: secret(2, 16)}
	c1 := encryption.Wrap(codec.String(), ring(t, k1))
	c12 := encryption.Wrap(codec.String(), ring(t, k1, k2))
	c2 := encryption.Wrap(codec.String(), ring(t, k2))

	old, err := c1.Encode("k", "secret value")
	require.NoError(t, err)
	require.NotContains(t, string(old), "secret value")
	require.Len(t, old, len("secret value")+encryption.Overhead)
	again, err := c1.Encode("k", "secret value")
	require.NoError(t, err)
	require.NotEqual(t, old, again, "a fresh nonce per value")

	// After rotation: the old key still reads, the new one writes.
	v, err := c12.Decode("k", old)
	require.NoError(t, err)
	require.Equal(t, "secret value", v)
	fresh, err := c12.Encode("k", "newer")
	require.NoError(t, err)
	v, err = c2.Decode("k", fresh)
	require.NoError(t, err)
	require.Equal(t, "newer", v)

	// Once the old key is dropped, its values no longer decrypt.
	_, err = c2.Decode("k", old)
	requireDecrypt(t, err, "unknown key id")
}

func TestTamperedAndMisplaced(t *testing.T) {
	t.Parallel()
	k := encryption.Key{ID: 7, Secret: secret(7, 32)}
	c := encryption.Wrap(codec.JSON[map[string]int](), ring(t, k))
	ct, err := c.Encode("user:1", map[string]int{"balance": 100})
	require.NoError(t, err)

	// Every single-bit change anywhere is refused, never decoded.
	for i := range ct {
		bad := bytes.Clone(ct)
		bad[i] ^= 0x01
		_, err := c.Decode("user:1", bad)
		require.ErrorIs(t, err, encryption.ErrDecrypt, "byte %d", i)
	}
	// Copied under another key: refused.
	_, err = c.Decode("user:2", ct)
	requireDecrypt(t, err, "authentication failed")
	// Same key id, another secret: refused.
	other := encryption.Wrap(codec.JSON[map[string]int](), ring(t, encryption.Key{ID: 7, Secret: secret(8, 32)}))
	_, err = other.Decode("user:1", ct)
	requireDecrypt(t, err, "authentication failed")
	// Truncated, empty, plaintext: refused.
	for _, bad := range [][]byte{ct[:len(ct)-1], ct[:encryption.Overhead-1], nil, []byte(`{"balance":100}`)} {
		_, err = c.Decode("user:1", bad)
		require.ErrorIs(t, err, encryption.ErrDecrypt)
	}
	_, err = c.Decode("user:1", []byte(`{"balance":100}`))
	requireDecrypt(t, err, "not an encrypted value")
}

func TestNewKeyring(t *testing.T) {
	t.Parallel()
	for name, keys := range map[string][]encryption.Key{
		"none":       nil,
		"id 0":       {{ID: 0, Secret: secret(1, 32)}},
		"duplicate":  {{ID: 1, Secret: secret(1, 32)}, {ID: 1, Secret: secret(2, 32)}},
		"short":      {{ID: 1, Secret: secret(1, 15)}},
		"odd length": {{ID: 1, Secret: secret(1, 20)}},
	} {
		_, err := encryption.NewKeyring(keys...)
		require.Error(t, err, name)
	}
	s := secret(3, 32)
	kr := ring(t, encryption.Key{ID: 3, Secret: s}, encryption.Key{ID: 9, Secret: secret(9, 24)})
	require.Equal(t, uint32(9), kr.WriteKeyID())
	// The secret is copied: changing the caller's slice changes nothing.
	ct, err := kr.Seal("k", []byte("v"))
	require.NoError(t, err)
	s[0] = 0
	pt, err := kr.Open("k", ct)
	require.NoError(t, err)
	require.Equal(t, "v", string(pt))

	nilRing := encryption.Wrap(codec.String(), nil)
	_, err = nilRing.Encode("k", "v")
	require.Error(t, err)
	_, err = nilRing.Decode("k", ct)
	require.Error(t, err)
}

// Through a typed cache on PostgreSQL: the table holds ciphertext, and a
// row copied under another key is a decode error (a miss with
// MissOnDecodeError), never the other key's value.
func TestAtRest(t *testing.T) {
	t.Parallel()
	pool := dbtest.Pool(t)
	ctx := context.Background()
	store, err := dbcache.New(ctx, pool, nil)
	require.NoError(t, err)
	defer store.Close()
	type account struct{ Owner, IBAN string }
	kr := ring(t, encryption.Key{ID: 1, Secret: secret(5, 32)})
	accounts, err := typed.New[account](store, &typed.Config[account]{Codec: encryption.Wrap(codec.JSON[account](), kr)})
	require.NoError(t, err)
	require.NoError(t, accounts.Set(ctx, "acct:ann", account{"ann", "DE89370400440532013000"}, dbcache.ExpiresIn(time.Hour)))
	got, err := accounts.Get(ctx, "acct:ann")
	require.NoError(t, err)
	require.Equal(t, "DE89370400440532013000", got.IBAN)

	var raw []byte
	require.NoError(t, pool.QueryRow(ctx, `SELECT value FROM dbcache_entries WHERE key = ':1:acct:ann'`).Scan(&raw))
	require.NotContains(t, string(raw), "DE89")
	require.NotContains(t, string(raw), "ann")

	// Someone with write access to the table copies ann's row to bob.
	dbtest.Exec(t, pool, `INSERT INTO dbcache_entries (key, value, expires)
SELECT ':1:acct:bob', value, expires FROM dbcache_entries WHERE key = ':1:acct:ann'`)
	_, err = accounts.Get(ctx, "acct:bob")
	require.ErrorIs(t, err, typed.ErrDecode)
	require.ErrorIs(t, err, encryption.ErrDecrypt)

	lenient, err := typed.New[account](store, &typed.Config[account]{Codec: encryption.Wrap(codec.JSON[account](), kr), MissOnDecodeError: true})
	require.NoError(t, err)
	_, err = lenient.Get(ctx, "acct:bob")
	require.ErrorIs(t, err, dbcache.ErrMiss)

	// IncrVersion moves ann's entry to version 2, where it still decrypts:
	// the caller's key is what is bound.
	_, err = store.IncrVersion(ctx, "acct:ann", 1)
	require.NoError(t, err)
	v2, err := typed.New[account](store.WithVersion(2), &typed.Config[account]{Codec: encryption.Wrap(codec.JSON[account](), kr)})
	require.NoError(t, err)
	got, err = v2.Get(ctx, "acct:ann")
	require.NoError(t, err)
	require.Equal(t, "ann", got.Owner)
}

// FuzzOpen: arbitrary bytes never decrypt to anything, and never panic.
func FuzzOpen(f *testing.F) {
	kr := ring(f, encryption.Key{ID: 1, Secret: secret(1, 32)})
	ct, _ := kr.Seal("k", []byte("hello"))
	f.Add(ct)
	f.Add([]byte{0xE1, 0, 0, 0, 1})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		pt, err := kr.Open("k", data)
		// The only value ever sealed under this key is "hello" (each
		// fuzzing process seals its own, with its own nonce).
		if err == nil && string(pt) != "hello" {
			t.Fatalf("forged bytes decrypted to %q", pt)
		}
		if err != nil && !errors.Is(err, encryption.ErrDecrypt) {
			t.Fatalf("not ErrDecrypt: %v", err)
		}
	})
}

// Every value gets a nonce of its own: 200,000 values sealed by 8
// goroutines at once under one key have 200,000 distinct nonces.
func TestNoncesUnique(t *testing.T) {
	t.Parallel()
	kr := ring(t, encryption.Key{ID: 1, Secret: secret(3, 32)})
	const goroutines, each = 8, 25_000
	nonces := make([][][12]byte, goroutines)
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Go(func() {
			for range each {
				ct, err := kr.Seal("k", []byte("same plaintext"))
				if err != nil {
					t.Error(err)
					return
				}
				nonces[g] = append(nonces[g], [12]byte(ct[5:17]))
			}
		})
	}
	wg.Wait()
	seen := make(map[[12]byte]bool, goroutines*each)
	for _, ns := range nonces {
		for _, n := range ns {
			require.False(t, seen[n], "a nonce repeated")
			seen[n] = true
		}
	}
	require.Len(t, seen, goroutines*each)
}

// The package reads no environment and no file: the keys are the
// application's. It imports nothing that could (os, io/fs, syscall, …).
func TestReadsNoEnvironmentOrFile(t *testing.T) {
	t.Parallel()
	files, err := filepath.Glob("*.go")
	require.NoError(t, err)
	fset := token.NewFileSet()
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, name, nil, parser.ImportsOnly)
		require.NoError(t, err)
		for _, imp := range f.Imports {
			path, err := strconv.Unquote(imp.Path.Value)
			require.NoError(t, err)
			for _, banned := range []string{"os", "io/fs", "io/ioutil", "syscall", "embed", "plugin", "unsafe", "net"} {
				require.False(t, path == banned || strings.HasPrefix(path, banned+"/"), "%s imports %s", name, path)
			}
		}
	}
}
