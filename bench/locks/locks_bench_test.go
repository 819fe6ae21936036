// Package locksbench measures package lock beside a Redis lock (go-redis:
// SET NX PX, and a compare-and-delete script to release), in the same run:
// acquire/release pairs per second at 1 and 16 goroutines, each goroutine
// on names of its own (uncontended: the cost of a pair, not of waiting).
// It lives under bench/ so that go-redis stays out of every library
// package's imports.
//
//	go test ./bench/locks -run '^$' -bench . -benchtime 3s -count 3
//
// Redis is a redis-server this benchmark starts on a free loopback port
// (no snapshots, no append-only file: it loses every lock on a restart),
// when the binary is installed; without it only package lock is measured.
// PostgreSQL is DBCACHE_TEST_DATABASE_URL, or a throwaway server
// (internal/dbtest). docs/locks.md has figures and how to read them.
package locksbench

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"

	"github.com/dbcache/dbcache/internal/dbtest"
	"github.com/dbcache/dbcache/lock"
)

// TestMain starts the test server (dbtest.Main) only when benchmarks run.
func TestMain(m *testing.M) {
	flag.Parse()
	if f := flag.Lookup("test.bench"); f == nil || f.Value.String() == "" {
		os.Exit(m.Run())
	}
	dbtest.Main(m)
}

// pair is one system's acquire then release of name.
type pair func(ctx context.Context, name string) error

// releaseScript deletes the lock only if it still holds this owner's
// token: Redis's documented single-instance lock.
var releaseScript = redis.NewScript(`if redis.call("get", KEYS[1]) == ARGV[1] then return redis.call("del", KEYS[1]) else return 0 end`)

func BenchmarkAcquireRelease(b *testing.B) {
	ctx := context.Background()
	rdbAddr := startRedis(b)
	for _, g := range []int{1, 16} {
		pool := newPool(b, g)
		locks, err := lock.New(ctx, pool, nil)
		if err != nil {
			b.Fatal(err)
		}
		systems := []struct {
			name string
			pair pair
		}{
			{"lock", func(ctx context.Context, name string) error {
				l, err := locks.TryAcquire(ctx, name, 10*time.Second)
				if err != nil {
					return err
				}
				return l.Release(ctx)
			}},
		}
		if rdbAddr != "" {
			rdb := redis.NewClient(&redis.Options{Addr: rdbAddr, PoolSize: g})
			b.Cleanup(func() { _ = rdb.Close() })
			systems = append(systems, struct {
				name string
				pair pair
			}{"redis", func(ctx context.Context, name string) error {
				var tok [16]byte
				_, _ = rand.Read(tok[:])
				owner := hex.EncodeToString(tok[:])
				ok, err := rdb.SetNX(ctx, name, owner, 10*time.Second).Result()
				if err != nil {
					return err
				}
				if !ok {
					return errors.New("redis: lock held")
				}
				n, err := releaseScript.Run(ctx, rdb, []string{name}, owner).Int()
				if err == nil && n != 1 {
					err = errors.New("redis: release found another owner")
				}
				return err
			}})
		}
		for _, sys := range systems {
			b.Run(fmt.Sprintf("%s/g=%d", sys.name, g), func(b *testing.B) {
				prefix := fmt.Sprintf("%s-%d-%d:", sys.name, g, time.Now().UnixNano())
				run(b, g, func(w, i int) error {
					return sys.pair(ctx, prefix+strconv.Itoa(w)+":"+strconv.Itoa(i%64))
				})
			})
		}
		_ = locks.Close()
	}
}

// run makes b.N pairs from g goroutines, goroutine w on names of its own,
// and reports pairs per second.
func run(b *testing.B, g int, pair func(w, i int) error) {
	b.ReportAllocs()
	var (
		wg   sync.WaitGroup
		once sync.Once
		fail error
	)
	b.ResetTimer()
	start := time.Now()
	for w := range g {
		wg.Go(func() {
			for i := w; i < b.N; i += g {
				if err := pair(w, i); err != nil {
					once.Do(func() { fail = err })
					return
				}
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	if fail != nil {
		b.Fatal(fail)
	}
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "pairs/s")
}

func newPool(b *testing.B, conns int) *pgxpool.Pool {
	b.Helper()
	s := dbtest.NewSchema(b)
	s.Migrate(b)
	cfg := s.PoolConfig(b)
	cfg.MaxConns = int32(conns)
	cfg.MinConns = int32(conns)
	return dbtest.NewPool(b, cfg)
}

// startRedis starts redis-server on a free loopback port, stopped when the
// benchmark ends, and returns its address, or "" (and says so) when it is
// not installed.
func startRedis(b *testing.B) string {
	b.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		b.Logf("redis-server not installed (apt-get install redis-server): measuring package lock alone")
		return ""
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	_ = ln.Close()
	cmd := exec.Command(bin, "--bind", "127.0.0.1", "--port", strconv.Itoa(port), "--save", "", "--appendonly", "no")
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	defer rdb.Close()
	for i := 0; ; i++ {
		if err := rdb.Ping(context.Background()).Err(); err == nil {
			break
		} else if i == 100 {
			b.Fatalf("redis-server on %s never answered: %v", addr, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return addr
}
