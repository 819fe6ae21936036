package certcache_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"
	"golang.org/x/crypto/acme"
	"golang.org/x/crypto/acme/autocert"

	"github.com/dbcache/dbcache/certcache"
	"github.com/dbcache/dbcache/internal/dbtest"
)

func init() {
	dbtest.Role("certcache-put", runPut)
}

// putJob is what a replica process is told to store.
type putJob struct {
	DSN  string `json:"dsn"`
	Key  string `json:"key"`
	Data []byte `json:"data"`
}

// runPut is another replica: it stores one value through its own pool and
// Cache, and prints "stored".
func runPut(ctx context.Context, arg string) error {
	var job putJob
	if err := json.Unmarshal([]byte(arg), &job); err != nil {
		return err
	}
	pool, err := pgxpool.New(ctx, job.DSN)
	if err != nil {
		return err
	}
	defer pool.Close()
	c, err := certcache.New(ctx, pool, nil)
	if err != nil {
		return err
	}
	if err := c.Put(ctx, job.Key, job.Data); err != nil {
		return err
	}
	fmt.Println("stored")
	return nil
}

// selfSigned returns a certificate for host valid from an hour ago for 90
// days, in the form autocert stores it: the PEM private key, then the
// chain.
func selfSigned(t *testing.T, host string) ([]byte, *big.Int) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	serial := big.NewInt(time.Now().UnixNano())
	tmpl := &x509.Certificate{
		SerialNumber: serial, Subject: pkix.Name{CommonName: host}, DNSNames: []string{host},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(90 * 24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	require.NoError(t, err)
	kb, err := x509.MarshalECPrivateKey(key)
	require.NoError(t, err)
	var buf bytes.Buffer
	require.NoError(t, pem.Encode(&buf, &pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}))
	require.NoError(t, pem.Encode(&buf, &pem.Block{Type: "CERTIFICATE", Bytes: der}))
	return buf.Bytes(), serial
}

// What the package is for: a certificate one replica (another process)
// stored is served by another replica's autocert.Manager from the table,
// without asking the CA (whose directory here is a port nothing listens
// on, so any order would fail).
func TestReplicasShareCertificates(t *testing.T) {
	t.Parallel()
	s := dbtest.NewSchema(t)
	s.Migrate(t)
	data, serial := selfSigned(t, "example.com")
	arg, err := json.Marshal(putJob{DSN: s.DSN(t), Key: "example.com", Data: data})
	require.NoError(t, err)
	out, err := dbtest.Start(t, "certcache-put", string(arg), false).Wait(time.Minute)
	require.NoError(t, err)
	require.Equal(t, "stored\n", out)

	m := &autocert.Manager{
		Prompt:     autocert.AcceptTOS,
		HostPolicy: autocert.HostWhitelist("example.com", "other.example.com"),
		Cache:      newCache(t, s.Pool(t), nil),
		Client:     &acme.Client{DirectoryURL: "http://127.0.0.1:1/directory"},
	}
	hello := &tls.ClientHelloInfo{
		ServerName:       "example.com",
		SignatureSchemes: []tls.SignatureScheme{tls.ECDSAWithP256AndSHA256},
		SupportedCurves:  []tls.CurveID{tls.CurveP256},
		CipherSuites:     []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256},
	}
	cert, err := m.GetCertificate(hello)
	require.NoError(t, err)
	require.Equal(t, 0, serial.Cmp(cert.Leaf.SerialNumber), "the stored certificate, not a new one")

	// A name with nothing stored is a miss, and autocert goes to the CA
	// (and fails here): the miss was real.
	hello.ServerName = "other.example.com"
	_, err = m.GetCertificate(hello)
	require.Error(t, err)
}

// The settings production runs with: a repeatable-read and a serializable
// session default (where replicas renewing one certificate at once would
// get 40001 from their upserts unless they run at READ COMMITTED), an ICU
// collation (keys that differ in case are two keys), and PgBouncer in
// transaction pooling with the schema named in Config.Schema.
func TestProductionSettings(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name      string
		profile   dbtest.Profile
		pgbouncer bool
	}{
		{"repeatable-read", dbtest.Profile{Collation: dbtest.CollationC, Isolation: "repeatable read"}, false},
		{"serializable", dbtest.Profile{Collation: dbtest.CollationC, Isolation: "serializable"}, false},
		{"icu", dbtest.Profile{Collation: dbtest.CollationLinguistic}, false},
		{"pgbouncer", dbtest.Profile{Collation: dbtest.CollationC}, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			ctx := ctxT(t)
			s := dbtest.SchemaWith(t, c.profile)
			s.Migrate(t)
			cfg := s.PoolConfig(t)
			if c.pgbouncer {
				cfg = dbtest.NewPgBouncer(t, nil).PoolConfig(t, s)
			}
			cfg.MaxConns = 4
			caches := []*certcache.Cache{
				newCache(t, dbtest.NewPool(t, cfg), &certcache.Config{Schema: s.Name}),
				newCache(t, dbtest.NewPool(t, cfg), &certcache.Config{Schema: s.Name}),
			}
			var wg sync.WaitGroup
			errs := make(chan error, 64)
			for i := range 16 {
				wg.Go(func() {
					for r := range 10 {
						c := caches[(i+r)%2]
						if err := c.Put(ctx, "example.com", fmt.Appendf(nil, "g%d r%d", i, r)); err != nil {
							errs <- err
							return
						}
						if _, err := c.Get(ctx, "example.com"); err != nil {
							errs <- err
							return
						}
					}
				})
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				require.NoError(t, err)
			}
			require.NoError(t, caches[0].Put(ctx, "Example.com", []byte("upper")))
			got, err := caches[1].Get(ctx, "example.com")
			require.NoError(t, err)
			require.NotEqual(t, "upper", string(got), "keys that differ in case are two keys")
			require.NoError(t, caches[1].Delete(ctx, "Example.com"))
			_, err = caches[0].Get(ctx, "Example.com")
			require.True(t, err == autocert.ErrCacheMiss)
		})
	}
}
