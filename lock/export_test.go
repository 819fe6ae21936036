package lock

import "time"

// Timeline returns, by the database's clock, when l was granted (its
// fence's statement), when its lease ends as far as this process knows
// (after its last Refresh), and when Release removed it (zero if not).
func Timeline(l *Lock) (granted, expires, released time.Time) {
	load := func(p *time.Time) time.Time {
		if p == nil {
			return time.Time{}
		}
		return *p
	}
	return load(l.acquired.Load()), load(l.expires.Load()), load(l.released.Load())
}

// FenceStatement is the grant's fence statement, with its table names.
func FenceStatement(c *Client) string { return c.q.fence }

// MadeKey is name's lease key.
func MadeKey(c *Client, name string) string { return c.cache.MakeKey(name) }
