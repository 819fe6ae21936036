package replicas

import (
	"context"
	"errors"
	"sync"
	"time"
)

const (
	// qPrimaryLSN is the primary's WAL insert position in bytes. The
	// insert position, not the write position (pg_current_wal_lsn()): a
	// FastCommit write returns once its commit record is inserted, before
	// it is written, and the position must be past it.
	//
	// When the last record ended exactly at the end of a page, the insert
	// position is reported past the next page's header (24 bytes, or 40
	// on the first page of a segment), while replay reports the end of
	// that record, the page boundary, and would never reach it on an idle
	// primary. No record lies between the boundary and the header's end,
	// so the boundary is the position to wait for.
	qPrimaryLSN = `SELECT CASE WHEN l % seg = 40 THEN l - 40 WHEN l % blk = 24 THEN l - 24 ELSE l END
FROM (SELECT (pg_current_wal_insert_lsn() - '0/0')::bigint AS l, current_setting('wal_block_size')::bigint AS blk,
             pg_size_bytes(current_setting('wal_segment_size')) AS seg) AS w`
	// qStandbyLSN is a standby's replay position in bytes, or NULL when
	// the server is not in recovery (a primary, or a promoted standby,
	// which serves no read: it no longer follows the primary).
	qStandbyLSN = `SELECT CASE WHEN pg_is_in_recovery() THEN (pg_last_wal_replay_lsn() - '0/0')::bigint END`
)

var errNotStandby = errors.New("replicas: the server is not in recovery (not a standby, or promoted)")

// run samples every RefreshInterval while reads arrive, until ctx ends.
func (s *state) run(ctx context.Context) {
	defer close(s.done)
	if len(s.standbys) == 0 {
		<-ctx.Done()
		return
	}
	tick := time.NewTicker(s.cfg.RefreshInterval)
	defer tick.Stop()
	s.sample(ctx) // at once: New's reads need no wait
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		// An idle cache sends nothing: the first read after a quiet spell
		// goes to the primary and wakes the sampler.
		if s.read.Swap(false) {
			s.sample(ctx)
		}
	}
}

// sample reads the primary's position, then every standby's, and works
// out what each standby covers.
func (s *state) sample(ctx context.Context) {
	at := s.now()
	var lsn int64
	pctx, cancel := context.WithTimeout(ctx, s.cfg.OpTimeout)
	err := s.pool.QueryRow(pctx, qPrimaryLSN).Scan(&lsn)
	cancel()
	s.sampled.Add(1)
	if err != nil {
		s.sampleErrors.Add(1)
	} else {
		if len(s.samples) == samplesKept {
			s.samples = append(s.samples[:0], s.samples[1:]...)
		}
		s.samples = append(s.samples, sample{at: at, lsn: lsn})
	}
	var wg sync.WaitGroup
	for _, sb := range s.standbys {
		wg.Go(func() { s.sampleStandby(ctx, sb) })
	}
	wg.Wait()
}

// sampleStandby reads a standby's replay position: it has every write
// acknowledged before the newest primary sample at or below it.
func (s *state) sampleStandby(ctx context.Context, sb *standby) {
	at := s.now()
	var replayed *int64
	sctx, cancel := context.WithTimeout(ctx, s.cfg.OpTimeout)
	err := sb.pool.QueryRow(sctx, qStandbyLSN).Scan(&replayed)
	cancel()
	s.sampled.Add(1)
	if err == nil && replayed == nil {
		err = errNotStandby
	}
	if err != nil {
		s.sampleErrors.Add(1)
		if ctx.Err() == nil {
			s.markDown(sb, err)
		}
		return
	}
	for i := len(s.samples) - 1; i >= 0; i-- {
		if s.samples[i].lsn <= *replayed {
			if s.samples[i].at > sb.covered.Load() {
				sb.covered.Store(s.samples[i].at)
			}
			break
		}
	}
	sb.sampledAt.Store(at)
	if at > sb.downAt.Load() && !sb.serving.Swap(true) {
		s.cfg.Logger.Info("replicas: standby serves reads", "standby", sb.name)
	}
}
