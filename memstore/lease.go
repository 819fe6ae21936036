package memstore

import (
	"context"
	"time"

	"github.com/dbcache/dbcache/dbcache"
)

// lease is a held lease; it ends at expires by the store's clock.
type lease struct {
	token   dbcache.LeaseToken
	expires time.Time
}

// leaseSweepAt is the number of leases past which an acquire first drops
// the expired ones, so a store that leases many keys once keeps no more
// than twice its live leases.
const leaseSweepAt = 1024

// AcquireLease takes key's lease for ttl unless a live lease holds it, as
// dbcache.Leaser says, by the store's clock (FastForward moves it).
// Leases are apart from the entries: Clear and DeletePrefix leave them.
func (s *Store) AcquireLease(ctx context.Context, key string, ttl time.Duration) (dbcache.Lease, error) {
	k, err := s.key(ctx, key)
	if err != nil {
		return dbcache.Lease{}, err
	}
	if err := dbcache.CheckLeaseTTL(ttl); err != nil {
		return dbcache.Lease{}, err
	}
	if err := s.checkOpen(); err != nil {
		return dbcache.Lease{}, err
	}
	st := s.s
	st.mu.Lock()
	defer st.mu.Unlock()
	now := st.now()
	if l, ok := st.leases[k]; ok && l.expires.After(now) {
		return dbcache.Lease{Remaining: l.expires.Sub(now)}, nil
	}
	if st.leases == nil {
		st.leases = map[string]lease{}
	}
	if len(st.leases) >= st.leaseSweep {
		for lk, l := range st.leases {
			if !l.expires.After(now) {
				delete(st.leases, lk)
			}
		}
		st.leaseSweep = max(leaseSweepAt, 2*len(st.leases))
	}
	l := lease{token: dbcache.NewLeaseToken(), expires: now.Add(ttl)}
	st.leases[k] = l
	return dbcache.Lease{Acquired: true, Token: l.token, Remaining: ttl}, nil
}

// ExtendLease gives the live lease held with token a new ttl from now.
func (s *Store) ExtendLease(ctx context.Context, key string, token dbcache.LeaseToken, ttl time.Duration) (bool, error) {
	k, err := s.leaseArgs(ctx, key, token)
	if err != nil {
		return false, err
	}
	if err := dbcache.CheckLeaseTTL(ttl); err != nil {
		return false, err
	}
	st := s.s
	st.mu.Lock()
	defer st.mu.Unlock()
	now := st.now()
	l, ok := st.leases[k]
	if !ok || l.token != token || !l.expires.After(now) {
		return false, nil
	}
	l.expires = now.Add(ttl)
	st.leases[k] = l
	return true, nil
}

// ReleaseLease ends the lease held with token and reports whether it was
// still live.
func (s *Store) ReleaseLease(ctx context.Context, key string, token dbcache.LeaseToken) (bool, error) {
	k, err := s.leaseArgs(ctx, key, token)
	if err != nil {
		return false, err
	}
	st := s.s
	st.mu.Lock()
	defer st.mu.Unlock()
	l, ok := st.leases[k]
	if !ok || l.token != token {
		return false, nil
	}
	delete(st.leases, k)
	return l.expires.After(st.now()), nil
}

// leaseArgs makes key and checks token and the store.
func (s *Store) leaseArgs(ctx context.Context, key string, token dbcache.LeaseToken) (string, error) {
	k, err := s.key(ctx, key)
	if err != nil {
		return "", err
	}
	if err := dbcache.CheckLeaseToken(token); err != nil {
		return "", err
	}
	return k, s.checkOpen()
}
