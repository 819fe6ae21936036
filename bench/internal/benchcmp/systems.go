package benchcmp

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"

	"github.com/dbcache/dbcache/dbcache"
	"github.com/dbcache/dbcache/internal/loadgen"
)

// The operations compared. Each system implements the ones it can; a key is
// the loadgen request's key, a counter lives under key+":n", as in
// dbcacheload.
const (
	OpGetHit     = "get_hit"
	OpGetMiss    = "get_miss"
	OpSet        = "set"
	OpAdd        = "add" // a new key every time: the path that writes
	OpIncr       = "incr"
	OpIncrHot    = "incr_hot" // every worker on one counter
	OpTouch      = "touch"
	OpGetMany    = "get_many_100"
	OpSetMany    = "set_many_100"
	batchKeys    = 100
	ttl          = 300 * time.Second
	hotCounter   = "hot:n"
	counterSufx  = ":n"
	missPrefix   = "miss:"
	addKeyPrefix = "add:"
)

// AllOps lists the compared operations in report order.
var AllOps = []string{OpGetHit, OpGetMiss, OpSet, OpAdd, OpIncr, OpIncrHot, OpTouch, OpGetMany, OpSetMany}

// System is one store under test: its operations by name.
type System struct {
	Name string
	Ops  map[string]loadgen.OpFunc
}

// addSeq numbers add's new keys across every system and run, so an add never
// meets a key an earlier run stored.
var addSeq atomic.Int64

func newAddKey() string {
	return addKeyPrefix + strconv.FormatInt(time.Now().UnixNano(), 36) + "-" + strconv.FormatInt(addSeq.Add(1), 36)
}

func wantStored(ok bool, err error) error {
	if err == nil && !ok {
		return errors.New("add of a new key stored nothing")
	}
	return err
}

// CacheSystem runs the operations through a dbcache.Cache.
func CacheSystem(name string, c *dbcache.Cache) System {
	ops := map[string]loadgen.OpFunc{
		OpGetHit: func(ctx context.Context, r *loadgen.Request) error {
			_, err := c.Get(ctx, r.Key)
			return err
		},
		OpGetMiss: func(ctx context.Context, r *loadgen.Request) error {
			_, err := c.Get(ctx, missPrefix+r.Key)
			if errors.Is(err, dbcache.ErrMiss) {
				return nil
			}
			return fmt.Errorf("want a miss, got %w", err)
		},
		OpSet: func(ctx context.Context, r *loadgen.Request) error {
			return c.Set(ctx, r.Key, r.Value, dbcache.ExpiresIn(ttl))
		},
		OpAdd: func(ctx context.Context, r *loadgen.Request) error {
			return wantStored(c.Add(ctx, newAddKey(), r.Value, dbcache.ExpiresIn(ttl)))
		},
		OpIncr: func(ctx context.Context, r *loadgen.Request) error {
			_, err := c.Incr(ctx, r.Key+counterSufx, 1)
			return err
		},
		OpIncrHot: func(ctx context.Context, r *loadgen.Request) error {
			_, err := c.Incr(ctx, hotCounter, 1)
			return err
		},
		OpTouch: func(ctx context.Context, r *loadgen.Request) error {
			ok, err := c.Touch(ctx, r.Key, dbcache.ExpiresIn(ttl))
			if err == nil && !ok {
				return loadgen.ErrMiss
			}
			return err
		},
		OpGetMany: func(ctx context.Context, r *loadgen.Request) error {
			_, err := c.GetMany(ctx, r.Keys)
			return err
		},
		OpSetMany: func(ctx context.Context, r *loadgen.Request) error {
			items := make(map[string][]byte, len(r.Keys))
			for _, k := range r.Keys {
				items[k] = r.Value
			}
			_, err := c.SetMany(ctx, items, dbcache.ExpiresIn(ttl))
			return err
		},
	}
	return System{Name: name, Ops: ops}
}

// madeKey is DefaultKeyFunc with no prefix at version 1, as the compared
// caches are configured.
func madeKey(k string) string { return ":1:" + k }

// RawSystem runs the cache's own statements (Statements) through pgx by
// hand: the floor dbcache is measured against.
func RawSystem(name string, pool *pgxpool.Pool, st Statements) System {
	us := ttl.Microseconds()
	made := func(keys []string) []string {
		out := make([]string, len(keys))
		for i, k := range keys {
			out[i] = madeKey(k)
		}
		return out
	}
	incr := func(ctx context.Context, key string) error {
		var v []byte
		if err := pool.QueryRow(ctx, st.Incr, key, "1", int64(1)).Scan(&v); err != nil {
			return err
		}
		_, err := strconv.ParseInt(string(v), 10, 64)
		return err
	}
	ops := map[string]loadgen.OpFunc{
		OpGetHit: func(ctx context.Context, r *loadgen.Request) error {
			var v []byte
			return pool.QueryRow(ctx, st.Get, madeKey(r.Key)).Scan(&v)
		},
		OpGetMiss: func(ctx context.Context, r *loadgen.Request) error {
			var v []byte
			err := pool.QueryRow(ctx, st.Get, madeKey(missPrefix+r.Key)).Scan(&v)
			if errors.Is(err, pgx.ErrNoRows) {
				return nil
			}
			return fmt.Errorf("want a miss, got %w", err)
		},
		OpSet: func(ctx context.Context, r *loadgen.Request) error {
			_, err := pool.Exec(ctx, st.Set, madeKey(r.Key), r.Value, us)
			return err
		},
		OpAdd: func(ctx context.Context, r *loadgen.Request) error {
			var ok bool
			return pool.QueryRow(ctx, st.Add, madeKey(newAddKey()), r.Value, us).Scan(&ok)
		},
		OpIncr: func(ctx context.Context, r *loadgen.Request) error {
			return incr(ctx, madeKey(r.Key+counterSufx))
		},
		OpIncrHot: func(ctx context.Context, r *loadgen.Request) error {
			return incr(ctx, madeKey(hotCounter))
		},
		OpTouch: func(ctx context.Context, r *loadgen.Request) error {
			_, err := pool.Exec(ctx, st.Touch, madeKey(r.Key), us)
			return err
		},
		OpGetMany: func(ctx context.Context, r *loadgen.Request) error {
			rows, err := pool.Query(ctx, st.GetMany, made(r.Keys))
			if err != nil {
				return err
			}
			m := make(map[string][]byte, len(r.Keys))
			var k string
			var v []byte
			_, err = pgx.ForEachRow(rows, []any{&k, &v}, func() error { m[k] = v; return nil })
			return err
		},
		OpSetMany: func(ctx context.Context, r *loadgen.Request) error {
			keys := made(r.Keys)
			sortStrings(keys)
			values := make([][]byte, len(keys))
			for i := range values {
				values[i] = r.Value
			}
			_, err := pool.Exec(ctx, st.SetMany, keys, values, us)
			return err
		},
	}
	return System{Name: name, Ops: ops}
}

// RedisSystem runs the operations through go-redis, as a Redis cache backend
// would: SET EX, SET NX EX, INCR, EXPIRE, MGET, and a pipeline of SET EX for
// set_many (Django's RedisCache.set_many pipelines the same way).
func RedisSystem(name string, rdb *redis.Client) System {
	ops := map[string]loadgen.OpFunc{
		OpGetHit: func(ctx context.Context, r *loadgen.Request) error {
			return rdb.Get(ctx, r.Key).Err()
		},
		OpGetMiss: func(ctx context.Context, r *loadgen.Request) error {
			err := rdb.Get(ctx, missPrefix+r.Key).Err()
			if errors.Is(err, redis.Nil) {
				return nil
			}
			return fmt.Errorf("want a miss, got %w", err)
		},
		OpSet: func(ctx context.Context, r *loadgen.Request) error {
			return rdb.Set(ctx, r.Key, r.Value, ttl).Err()
		},
		OpAdd: func(ctx context.Context, r *loadgen.Request) error {
			return wantStored(rdb.SetNX(ctx, newAddKey(), r.Value, ttl).Result())
		},
		OpIncr: func(ctx context.Context, r *loadgen.Request) error {
			return rdb.Incr(ctx, r.Key+counterSufx).Err()
		},
		OpIncrHot: func(ctx context.Context, r *loadgen.Request) error {
			return rdb.Incr(ctx, hotCounter).Err()
		},
		OpTouch: func(ctx context.Context, r *loadgen.Request) error {
			return rdb.Expire(ctx, r.Key, ttl).Err()
		},
		OpGetMany: func(ctx context.Context, r *loadgen.Request) error {
			return rdb.MGet(ctx, r.Keys...).Err()
		},
		OpSetMany: func(ctx context.Context, r *loadgen.Request) error {
			_, err := rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
				for _, k := range r.Keys {
					p.Set(ctx, k, r.Value, ttl)
				}
				return nil
			})
			return err
		},
	}
	return System{Name: name, Ops: ops}
}

func sortStrings(s []string) {
	// Insertion sort is plenty for 100 keys and keeps the hot path
	// allocation-free.
	for i := 1; i < len(s); i++ {
		for j := i; j > 0 && strings.Compare(s[j-1], s[j]) > 0; j-- {
			s[j-1], s[j] = s[j], s[j-1]
		}
	}
}
