// Package ratelimitbench measures ratelimit's checks beside
// go-redis/redis_rate on a local Redis, in the same run: checks per second
// at 1 and 16 goroutines, for checks that are admitted (a write each) and
// checks that are denied (one exhausted key). It lives under bench/ so that
// redis_rate and its Redis client stay out of every library package's
// imports.
//
//	go test ./bench/ratelimit -run '^$' -bench . -benchtime 3s -count 3
//
// Redis is a redis-server this benchmark starts on a free loopback port
// (no snapshots, no append-only file), when the binary is installed
// (apt-get install redis-server); without it only ratelimit is measured.
// PostgreSQL is DBCACHE_TEST_DATABASE_URL, or a throwaway server
// (internal/dbtest). docs/ratelimit.md has figures and how to read them.
package ratelimitbench

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/go-redis/redis_rate/v10"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"

	"github.com/dbcache/dbcache/internal/dbtest"
	"github.com/dbcache/dbcache/ratelimit"
)

// TestMain starts the test server (dbtest.Main) only when benchmarks run:
// the package has no tests, and `go test ./...` should not start a server
// for it.
func TestMain(m *testing.M) {
	flag.Parse()
	if f := flag.Lookup("test.bench"); f == nil || f.Value.String() == "" {
		os.Exit(m.Run())
	}
	dbtest.Main(m)
}

// keys is how many keys the admitted workload cycles through: each check
// of a key finds it well within its limit.
const keys = 10_000

// admitLimit admits every check of the admitted workload; denyLimit, once
// its one unit is taken, denies every check for an hour.
var (
	admitLimit = ratelimit.Limit{Rate: 1_000_000, Period: time.Second}
	denyLimit  = ratelimit.Limit{Rate: 1, Period: time.Hour}
)

// checker is one system's check.
type checker func(ctx context.Context, key string, limit ratelimit.Limit) (allowed bool, err error)

func BenchmarkCheck(b *testing.B) {
	ctx := context.Background()
	rdb := startRedis(b)
	for _, g := range []int{1, 16} {
		pool := newPool(b, g)
		durable := newLimiter(b, pool, false)
		fast := newLimiter(b, pool, true)
		systems := []struct {
			name  string
			check checker
		}{
			{"dbcache", func(ctx context.Context, key string, l ratelimit.Limit) (bool, error) {
				r, err := durable.Allow(ctx, key, l)
				return r.Allowed, err
			}},
			{"dbcache-fastcommit", func(ctx context.Context, key string, l ratelimit.Limit) (bool, error) {
				r, err := fast.Allow(ctx, key, l)
				return r.Allowed, err
			}},
		}
		if rdb != nil {
			rl := redis_rate.NewLimiter(redis.NewClient(&redis.Options{Addr: rdb.addr, PoolSize: g}))
			systems = append(systems, struct {
				name  string
				check checker
			}{"redis_rate", func(ctx context.Context, key string, l ratelimit.Limit) (bool, error) {
				r, err := rl.Allow(ctx, key, redis_rate.Limit{Rate: l.Rate, Period: l.Period, Burst: l.Rate})
				if err != nil {
					return false, err
				}
				return r.Allowed > 0, nil
			}})
		}
		for _, workload := range []string{"admitted", "denied"} {
			for _, sys := range systems {
				if workload == "denied" && sys.name == "dbcache-fastcommit" {
					continue // a denial writes nothing: the same statement as dbcache's
				}
				b.Run(fmt.Sprintf("%s/%s/g=%d", workload, sys.name, g), func(b *testing.B) {
					prefix := fmt.Sprintf("%s-%d-%d:", sys.name, g, time.Now().UnixNano())
					limit := admitLimit
					if workload == "denied" {
						limit = denyLimit
						if ok, err := sys.check(ctx, prefix+"hot", limit); err != nil || !ok {
							b.Fatalf("the first check of the denied key: allowed %v, %v", ok, err)
						}
					}
					run(b, g, func(i int) error {
						key := prefix + "hot"
						if workload == "admitted" {
							key = prefix + strconv.Itoa(i%keys)
						}
						ok, err := sys.check(ctx, key, limit)
						if err == nil && ok != (workload == "admitted") {
							err = fmt.Errorf("check %d of %s: allowed %v", i, workload, ok)
						}
						return err
					})
				})
			}
		}
	}
}

// run makes b.N checks from g goroutines and reports checks per second.
func run(b *testing.B, g int, check func(i int) error) {
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
				if err := check(i); err != nil {
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
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "checks/s")
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

func newLimiter(b *testing.B, pool *pgxpool.Pool, fast bool) *ratelimit.Limiter {
	b.Helper()
	l, err := ratelimit.New(context.Background(), pool, &ratelimit.Config{FastCommit: fast})
	if err != nil {
		b.Fatal(err)
	}
	return l
}

// redisServer is a redis-server this benchmark started.
type redisServer struct {
	addr string
}

// startRedis starts redis-server on a free loopback port, stopped when the
// benchmark ends, or returns nil (and says so) when it is not installed.
func startRedis(b *testing.B) *redisServer {
	b.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		b.Logf("redis-server not installed (apt-get install redis-server): measuring ratelimit alone")
		return nil
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
	return &redisServer{addr: addr}
}
