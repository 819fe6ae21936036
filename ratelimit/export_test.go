package ratelimit

import "github.com/jackc/pgx/v5/pgxpool"

// WritesWrapped reports whether l's writes run wrapped in READ COMMITTED
// transactions.
func WritesWrapped(l *Limiter) bool { return l.run.Wrapped() }

// WithPool returns a copy of l that runs on pool, keeping what l learnt
// of the isolation (so a test can give it connections whose default
// differs from the one New saw).
func WithPool(l *Limiter, pool *pgxpool.Pool) *Limiter {
	c := *l
	c.run = l.run.WithPool(pool)
	return &c
}

// Statements returns l's check and reset statements, for tests that run
// them by hand.
func Statements(l *Limiter) (check, reset string) { return l.stmt.check, l.stmt.reset }
