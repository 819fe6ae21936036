package nearcache

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/dbcache/dbcache/dbcache"
)

// The feed: the cache table's changes, read by logical decoding.
//
// Each feed session opens a replication connection, creates a TEMPORARY
// logical slot with the pgoutput plugin (dropped by the server when the
// session ends, however it ends: no slot is ever left behind retaining
// WAL), and streams the publication's changes: the key of every row
// inserted, updated or deleted, and truncates. Every committed change
// reaches the feed once the server has flushed its WAL, in commit order;
// rolled-back transactions never do, and a transaction's changes arrive
// only once it has committed (which is why writes in a caller's
// transaction invalidate on commit, not before).
//
// Coherence is proven, not assumed: every HeartbeatInterval the layer runs
// one statement on the pool that writes a transactional logical message
// (pg_logical_emit_message) named after the session's slot, and commits it
// with its WAL flushed. The message is decoded in commit order, so when it
// arrives, every write that had returned to its writer before the
// heartbeat was sent has been applied. The send time of the newest such
// heartbeat is "confirmed"; copies are served only while it is within
// MaxStaleness of now. A feed that lags (a busy server, WAL not yet
// flushed) therefore degrades to reads from the store; one that is lost
// (connection closed, silent for FeedTimeout, the table replaced, the
// publication dropped) drops every copy at once and reconnects with
// backoff, and copies are stored again only once a new slot exists.
//
// Each transaction's changes arrive between its Begin, which carries its
// top-level transaction id (32 bits, widened to the 64-bit xid8 with the
// epoch of a recent snapshot), and its Commit; the feed never asks for
// in-progress transactions to be streamed (proto_version 1, no
// streaming), so every change arrives with the id of a committed
// transaction. The id of each key's newest change is remembered (see
// local.go), so that a fill whose snapshot had not seen it end keeps
// nothing.

// qHeartbeat writes a heartbeat into the WAL, in its own transaction,
// committed with its WAL flushed locally (synchronous_commit = local for
// this transaction only: a role whose default is off would otherwise leave
// it to the WAL writer, and a synchronous standby slow to confirm would
// hold it), and in the same statement checks that the table is the one the
// feed follows, still logged, and still published, and returns its
// snapshot, which prunes the remembered transaction ids.
const qHeartbeat = `SELECT coalesce((SELECT c.oid::bigint FROM pg_class c WHERE c.oid = to_regclass($3) AND c.relpersistence = 'p'), 0),
       EXISTS (SELECT 1 FROM pg_publication p WHERE p.pubname = $4
               AND (p.puballtables OR EXISTS (SELECT 1 FROM pg_publication_rel r WHERE r.prpubid = p.oid AND r.prrelid = to_regclass($3)))),
       pg_logical_emit_message(true, $1, $2) IS NOT NULL,
       pg_current_snapshot()::text
FROM (SELECT set_config('synchronous_commit', 'local', true)) AS s`

// qSnapshot is a snapshot taken once a feed session's slot exists: the
// transactions running in it may have committed before the slot's
// consistent point (their changes never delivered) and still be
// invisible, so every kept fill must see them end.
const qSnapshot = `SELECT pg_current_snapshot()::text`

// statusInterval is how often the feed tells the server how far it has
// read, so the slot's WAL can be recycled.
const statusInterval = time.Second

var errFeedSilent = errors.New("nearcache: the feed was silent for longer than Config.FeedTimeout")

type feed struct {
	c       *Cache
	pool    *pgxpool.Pool
	replCfg *pgconn.Config
	// slotBase names this feed's slots: dbcache_near_<pid>_<random>; each
	// session appends its number.
	slotBase string
	sessions atomic.Int64

	// slot is the current session's slot while it is up, else "".
	slot atomic.Pointer[string]
	// confirmed is when (c.since) the newest heartbeat the feed has
	// received was sent; 0 when none since the feed last came up.
	confirmed atomic.Int64
	// epochRef is a recent full transaction id (a snapshot's xmax), to
	// widen the feed's 32-bit ids.
	epochRef atomic.Uint64

	hbMu   sync.Mutex
	hbSeq  uint64
	hbSent map[uint64]int64 // heartbeats in flight: seq → send time (c.since)

	// kill ends the current session with a cause (the heartbeat's checks).
	killMu sync.Mutex
	kill   context.CancelCauseFunc

	// first gets the first session's outcome: nil once it is up, or the
	// error it failed with.
	firstOnce sync.Once
	first     chan error
	// lastFailLog is when a failed restart was last logged, wasUp whether
	// a session was ever up (New returns the first one's failure itself)
	// (run's goroutine only).
	lastFailLog time.Time
	wasUp       bool
}

func newFeed(c *Cache, pool *pgxpool.Pool, repl *pgconn.Config) *feed {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return &feed{
		c:        c,
		pool:     pool,
		replCfg:  repl,
		slotBase: fmt.Sprintf("dbcache_near_%d_%s", os.Getpid(), hex.EncodeToString(b[:])),
		hbSent:   map[uint64]int64{},
		first:    make(chan error, 1),
	}
}

// run keeps the feed up until ctx ends.
func (f *feed) run(ctx context.Context) {
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		began := time.Now()
		err := f.session(ctx)
		f.down(err)
		f.firstOnce.Do(func() { f.first <- err })
		if ctx.Err() != nil {
			return
		}
		if time.Since(began) > time.Minute {
			backoff = 100 * time.Millisecond
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

// down marks the feed lost: nothing is served or stored, every copy goes.
func (f *feed) down(err error) {
	// Copies first, then the slot: Stats reads FeedUp from the slot, so
	// once it says the feed is down every copy is already gone and none can
	// be stored.
	n := f.c.local.setFeed(false)
	wasUp := f.slot.Swap(nil) != nil
	f.confirmed.Store(0)
	if !wasUp {
		// A start that failed: said once every ten seconds at most while
		// the feed stays down.
		if f.wasUp && !f.c.closed.Load() && time.Since(f.lastFailLog) > 10*time.Second {
			f.lastFailLog = time.Now()
			f.c.cfg.Logger.Warn("nearcache: feed still down; reads go to the database", "err", err)
		}
		return
	}
	f.wasUp = true
	f.c.cnt.flushes.Add(1)
	if errors.Is(err, context.Canceled) && f.c.closed.Load() {
		return // Close
	}
	f.c.cfg.Logger.Warn("nearcache: feed lost; every local copy dropped, reads go to the database until it is back", "err", err, "dropped", n)
	f.c.traceFeed(func(t Tracer) {
		t.TraceInvalidate(Invalidation{Cause: CauseFeedLost, Dropped: n})
		t.TraceFeed(false, err)
	})
}

// session runs one feed session: connect, create a temporary slot, stream.
func (f *feed) session(parent context.Context) (err error) {
	ctx, kill := context.WithCancelCause(parent)
	defer kill(nil)
	f.killMu.Lock()
	f.kill = kill
	f.killMu.Unlock()

	sctx, cancel := context.WithTimeout(ctx, f.c.cfg.StartTimeout)
	defer cancel()
	conn, err := pgconn.ConnectConfig(sctx, f.replCfg)
	if err != nil {
		return explainStart(fmt.Errorf("nearcache: feed: connect for replication: %w", err))
	}
	defer func() {
		cctx, ccancel := context.WithTimeout(context.WithoutCancel(parent), time.Second)
		_ = conn.Close(cctx) // the temporary slot goes with the session
		ccancel()
	}()
	n := f.sessions.Add(1)
	slot := f.slotBase + "_" + strconv.FormatInt(n, 10)
	// CREATE_REPLICATION_SLOT waits for a consistent point: for the
	// transactions open now to end. Every change committed after it is
	// decoded.
	if _, err := pglogrepl.CreateReplicationSlot(sctx, conn, slot, "pgoutput", pglogrepl.CreateReplicationSlotOptions{
		Temporary: true, SnapshotAction: "NOEXPORT_SNAPSHOT", Mode: pglogrepl.LogicalReplication,
	}); err != nil {
		return explainStart(fmt.Errorf("nearcache: feed: create a temporary replication slot: %w", cause(ctx, err)))
	}
	// Transactions running now may have committed before the slot's
	// consistent point, so their changes will never be delivered, and
	// still be invisible (waiting for a synchronous standby): table-wide,
	// until they end or the feed delivers their commit.
	var snapText string
	if err := f.pool.QueryRow(sctx, qSnapshot).Scan(&snapText); err != nil {
		return fmt.Errorf("nearcache: feed: take a snapshot: %w", cause(ctx, err))
	}
	start, err := dbcache.ParseSnapshot(snapText)
	if err != nil {
		return fmt.Errorf("nearcache: feed: %w", err)
	}
	f.epochRef.Store(start.Xmax)
	for _, x := range start.Xip {
		f.c.local.tableWide(x, tableStart)
	}
	if err := pglogrepl.StartReplication(sctx, conn, slot, 0, pglogrepl.StartReplicationOptions{
		Mode: pglogrepl.LogicalReplication,
		PluginArgs: []string{
			"proto_version '1'",
			// Quoted: pgoutput folds unquoted names to lower case.
			`publication_names '"` + f.c.target.publication + `"'`,
			"messages 'true'",
		},
	}); err != nil {
		return fmt.Errorf("nearcache: feed: start replication: %w", cause(ctx, err))
	}
	// From here on, a fill that begins may store its copy: any change
	// after its read is after the slot's consistent point, so it arrives.
	f.c.local.setFeed(true)
	f.slot.Store(&slot)
	if n > 1 {
		f.c.cnt.feedRestarts.Add(1)
		f.c.cfg.Logger.Info("nearcache: feed back up", "slot", slot)
	}
	f.c.traceFeed(func(t Tracer) { t.TraceFeed(true, nil) })
	f.firstOnce.Do(func() { f.first <- nil })
	return f.stream(ctx, conn, slot)
}

// cause prefers the reason the session was killed over the error it made.
func cause(ctx context.Context, err error) error {
	if c := context.Cause(ctx); c != nil && !errors.Is(c, context.Canceled) {
		return c
	}
	return err
}

// stream applies the feed's messages until the session ends.
func (f *feed) stream(ctx context.Context, conn *pgconn.PgConn, slot string) error {
	var (
		pos        pglogrepl.LSN // read up to here
		lastStatus time.Time
		tx         = txState{keyIdx: -1}
	)
	for {
		if time.Since(lastStatus) >= statusInterval {
			// Asking for a reply makes the server answer with a keepalive,
			// so a feed whose heartbeats cannot run (a pool with no free
			// connection) is not mistaken for a silent one: its copies stop
			// being served (no heartbeat confirms them), but the feed stays.
			if err := pglogrepl.SendStandbyStatusUpdate(ctx, conn, pglogrepl.StandbyStatusUpdate{WALWritePosition: pos, ReplyRequested: true}); err != nil {
				return fmt.Errorf("nearcache: feed: send status: %w", cause(ctx, err))
			}
			lastStatus = time.Now()
		}
		rctx, cancel := context.WithTimeout(ctx, f.c.cfg.FeedTimeout)
		msg, err := conn.ReceiveMessage(rctx)
		silent := rctx.Err() == context.DeadlineExceeded && ctx.Err() == nil
		cancel()
		if err != nil {
			if silent {
				return errFeedSilent
			}
			return fmt.Errorf("nearcache: feed: %w", cause(ctx, err))
		}
		switch msg := msg.(type) {
		case *pgproto3.CopyData:
			if len(msg.Data) == 0 {
				continue
			}
			switch msg.Data[0] {
			case pglogrepl.PrimaryKeepaliveMessageByteID:
				ka, err := pglogrepl.ParsePrimaryKeepaliveMessage(msg.Data[1:])
				if err != nil {
					return fmt.Errorf("nearcache: feed: %w", err)
				}
				// A keepalive carries how far the walsender has read
				// (its sentPtr), and everything before it has been
				// received: confirm exactly that. A walsender stopping
				// for a shutdown waits until the position confirmed
				// equals its own; one past it would hold the shutdown.
				pos = ka.ServerWALEnd
				if ka.ReplyRequested {
					lastStatus = time.Time{}
				}
			case pglogrepl.XLogDataByteID:
				xld, err := pglogrepl.ParseXLogData(msg.Data[1:])
				if err != nil {
					return fmt.Errorf("nearcache: feed: %w", err)
				}
				m, err := pglogrepl.Parse(xld.WALData)
				if err != nil {
					return fmt.Errorf("nearcache: feed: decode: %w", err)
				}
				if err := f.apply(m, slot, &tx); err != nil {
					return err
				}
				pos = max(pos, xld.WALStart)
			}
		case *pgproto3.ErrorResponse:
			return fmt.Errorf("nearcache: feed: %w", pgconn.ErrorResponseToPgError(msg))
		case *pgproto3.CopyDone:
			return errors.New("nearcache: feed: the server ended replication")
		}
	}
}

// txState is what the stream remembers between messages: the table's key
// column, and the transaction being applied.
type txState struct {
	keyIdx     int
	xid        uint64 // widened
	commitTime time.Time
}

// widen makes a 32-bit transaction id the 64-bit one within 2^31 of ref
// (PostgreSQL keeps every id in use that close to the newest).
func widen(x uint32, ref uint64) uint64 {
	return uint64(int64(ref) + int64(int32(x-uint32(ref))))
}

// apply applies one decoded message.
func (f *feed) apply(m pglogrepl.Message, slot string, tx *txState) error {
	oid := f.c.target.oid
	switch m := m.(type) {
	case *pglogrepl.BeginMessage:
		tx.commitTime = m.CommitTime
		tx.xid = widen(m.Xid, f.epochRef.Load())
	case *pglogrepl.CommitMessage:
		f.c.local.committed(tx.xid)
		tx.xid = 0
	case *pglogrepl.RelationMessage:
		if m.RelationID != oid {
			return nil
		}
		tx.keyIdx = -1
		for i, col := range m.Columns {
			if col.Name == "key" {
				tx.keyIdx = i
			}
		}
		if tx.keyIdx < 0 {
			return errors.New("nearcache: feed: the published table has no key column")
		}
	case *pglogrepl.InsertMessage:
		if m.RelationID == oid {
			f.changed(m.Tuple, tx)
		}
	case *pglogrepl.UpdateMessage:
		if m.RelationID == oid {
			if m.OldTuple != nil {
				f.changed(m.OldTuple, tx)
			}
			f.changed(m.NewTuple, tx)
		}
	case *pglogrepl.DeleteMessage:
		if m.RelationID == oid {
			f.changed(m.OldTuple, tx)
		}
	case *pglogrepl.TruncateMessage:
		for _, id := range m.RelationIDs {
			if id == oid {
				f.c.local.tableWide(tx.xid, tableTruncate)
				f.flush()
			}
		}
	case *pglogrepl.LogicalDecodingMessage:
		if m.Prefix == slot {
			f.heartbeatArrived(m.Content)
		}
	}
	return nil
}

// changed invalidates the key of a changed row and remembers its
// transaction. A key the feed cannot read (a key stored out of line and
// unchanged, which pgoutput leaves out) drops everything and makes the
// transaction table-wide: correct, if costly, and not something dbcache's
// keys (at most 2 KB, inline) should ever cause.
func (f *feed) changed(t *pglogrepl.TupleData, tx *txState) {
	if t == nil || tx.keyIdx < 0 || tx.keyIdx >= len(t.Columns) || t.Columns[tx.keyIdx].DataType != pglogrepl.TupleDataTypeText {
		f.c.local.tableWide(tx.xid, tableTruncate)
		f.flush()
		return
	}
	key := string(t.Columns[tx.keyIdx].Data)
	dropped := f.c.local.changed(key, tx.xid)
	f.c.cnt.invalidations.Add(1)
	f.c.traceFeed(func(tr Tracer) {
		inv := Invalidation{Cause: CauseFeed, Keys: 1, Dropped: b2i(dropped), Lag: time.Since(tx.commitTime)}
		if f.c.cfg.TraceKeys {
			inv.Key = key
		}
		tr.TraceInvalidate(inv)
	})
}

func (f *feed) flush() {
	n := f.c.local.flush()
	f.c.cnt.flushes.Add(1)
	f.c.traceFeed(func(tr Tracer) { tr.TraceInvalidate(Invalidation{Cause: CauseTruncate, Dropped: n}) })
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

// heartbeats sends a heartbeat every HeartbeatInterval while the feed is
// up, until ctx ends.
func (f *feed) heartbeats(ctx context.Context) {
	t := time.NewTicker(f.c.cfg.HeartbeatInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if s := f.slot.Load(); s != nil {
			f.heartbeat(ctx, *s)
		}
	}
}

func (f *feed) heartbeat(ctx context.Context, slot string) {
	f.hbMu.Lock()
	f.hbSeq++
	seq := f.hbSeq
	f.hbSent[seq] = f.c.since(time.Now())
	f.hbMu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, f.c.cfg.FeedTimeout)
	defer cancel()
	var (
		oid      int64
		covered  bool
		emitted  bool
		snapText string
	)
	err := f.pool.QueryRow(ctx, qHeartbeat, slot, strconv.FormatUint(seq, 10), f.c.target.table, f.c.target.publication).Scan(&oid, &covered, &emitted, &snapText)
	if err != nil {
		// Not fatal by itself: without heartbeats the copies stop being
		// served after MaxStaleness, and a dead server ends the feed too.
		f.forget(seq)
		if ctx.Err() == nil || f.c.closed.Load() {
			f.c.cfg.Logger.Debug("nearcache: heartbeat failed", "err", err)
		}
		return
	}
	if snap, err := dbcache.ParseSnapshot(snapText); err == nil {
		f.epochRef.Store(snap.Xmax)
		f.c.local.prune(snap)
	}
	var why error
	switch {
	case uint32(oid) != f.c.target.oid:
		why = errors.New("nearcache: the cache table was dropped, replaced or made unlogged")
	case !covered:
		why = fmt.Errorf("nearcache: publication %q no longer covers the cache table", f.c.target.publication)
	}
	if why != nil {
		f.forget(seq)
		f.killMu.Lock()
		if f.kill != nil {
			f.kill(why)
		}
		f.killMu.Unlock()
	}
}

func (f *feed) forget(seq uint64) {
	f.hbMu.Lock()
	delete(f.hbSent, seq)
	f.hbMu.Unlock()
}

// heartbeatArrived confirms coherence as of the heartbeat's send time.
func (f *feed) heartbeatArrived(content []byte) {
	seq, err := strconv.ParseUint(string(content), 10, 64)
	if err != nil {
		return
	}
	f.hbMu.Lock()
	sent, ok := f.hbSent[seq]
	for s := range f.hbSent {
		if s <= seq {
			delete(f.hbSent, s)
		}
	}
	f.hbMu.Unlock()
	if !ok {
		return
	}
	for {
		c := f.confirmed.Load()
		if sent <= c || f.confirmed.CompareAndSwap(c, sent) {
			return
		}
	}
}
