package lock_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/dbcache/dbcache/lock"
)

func ExampleClient_Acquire() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, os.Getenv("DATABASE_URL"))
	if err != nil {
		panic(err)
	}
	defer pool.Close()
	locks, err := lock.New(ctx, pool, nil)
	if err != nil {
		panic(err)
	}
	defer locks.Close()

	// Waits at most 10 s for the lock; holds it for at most 30 s unless
	// refreshed.
	wait, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	l, err := locks.Acquire(wait, "example-report", 30*time.Second)
	if err != nil {
		panic(err)
	}
	fmt.Println("fence:", l.Fence()) // give it to the storage the lock protects

	// Another process, or a holder that is too late, is refused.
	_, err = locks.TryAcquire(ctx, "example-report", 30*time.Second)
	fmt.Println("locked:", errors.Is(err, lock.ErrLocked))
	if err := l.Refresh(ctx, 30*time.Second); err != nil {
		panic(err) // lock.ErrNotHeld: the lease ran out; stop working
	}
	if err := l.Release(ctx); err != nil {
		panic(err)
	}
	fmt.Println("late release:", errors.Is(l.Release(ctx), lock.ErrNotHeld))

	next, err := locks.TryAcquire(ctx, "example-report", 30*time.Second)
	if err != nil {
		panic(err)
	}
	defer next.Release(ctx)
	fmt.Println("next fence:", next.Fence())
	// Output:
	// fence: 1
	// locked: true
	// late release: true
	// next fence: 2
}

// Where the protected data is in the same database, Check verifies the
// lock inside the transaction that writes it: no other owner can be
// granted the lock before the transaction ends.
func ExampleLock_Check() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, os.Getenv("DATABASE_URL"))
	if err != nil {
		panic(err)
	}
	defer pool.Close()
	locks, err := lock.New(ctx, pool, nil)
	if err != nil {
		panic(err)
	}
	defer locks.Close()
	l, err := locks.TryAcquire(ctx, "example-ledger", time.Minute)
	if err != nil {
		panic(err)
	}
	defer l.Release(ctx)

	err = pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if err := l.Check(ctx, tx); err != nil {
			return err // lock.ErrNotHeld: roll back
		}
		// … the writes the lock protects, in tx …
		return nil
	})
	fmt.Println("committed under the lock:", err == nil)

	// In another process, from the owner token alone.
	restored, err := locks.Restore(ctx, "example-ledger", l.Owner())
	if err != nil {
		panic(err)
	}
	fmt.Println("same fence:", restored.Fence() == l.Fence())
	// Output:
	// committed under the lock: true
	// same fence: true
}
