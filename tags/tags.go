package tags

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"unicode"
	"unicode/utf8"

	"github.com/dbcache/dbcache/dbcache"
)

const (
	// MaxTags is the most tags one entry may carry; a write with more is
	// ErrTooManyTags and writes nothing.
	MaxTags = 32
	// MaxTagBytes is the longest tag, in bytes.
	MaxTagBytes = 128
	// PrefixDefault is Config.Prefix's default. It begins with "~", which
	// sorts after ASCII letters and digits, so that a culler, which
	// removes never-expiring entries last and those in key order, removes
	// the tags' versions after the never-expiring entries whose keys are
	// made of those.
	PrefixDefault = "~dbcache-tag:"
)

var (
	// ErrCorrupt is returned by a read of a stored value that is not a
	// tagged entry (written by another writer than a tags.Cache) or whose
	// header is damaged. It never comes with a value.
	ErrCorrupt = errors.New("tags: stored value is not a tagged entry or its header is damaged")
	// ErrInvalidTag is returned for an empty tag, one longer than
	// MaxTagBytes, or one that is not UTF-8 or holds a space or a control
	// character. Nothing is written.
	ErrInvalidTag = errors.New("tags: invalid tag")
	// ErrTooManyTags is returned for a write with more than MaxTags
	// distinct tags. Nothing is written.
	ErrTooManyTags = errors.New("tags: too many tags")
)

// Config configures a Cache. The zero value (or nil) is the defaults.
type Config struct {
	// Prefix is the caller-key prefix under which the tags' versions are
	// stored, as entries of the same store: tag t's version is the entry
	// Prefix+t. A key of the Cache's own that starts with Prefix is
	// refused (dbcache.ErrInvalidKey). Defaults to PrefixDefault.
	Prefix string

	// Origin, for a Cache over a near cache (package nearcache), is the
	// store the near cache is in front of (a *dbcache.Cache). A near
	// cache serves each key within its staleness bound on its own, so a
	// read through it can get an entry newer than its copy of a tag's
	// version, which then does not match: with Origin set, such a
	// mismatch is confirmed by reading the entry and its versions from
	// Origin before it is a miss, so a miss is what one statement of
	// Origin saw; and writes read their tags' versions from Origin. Origin must be a dbcache.TTLReader. Defaults to nil: a
	// mismatch is a miss.
	Origin dbcache.Store
}

// Cache is a tagged cache over a dbcache.Store. It is safe for concurrent
// use.
type Cache struct {
	store     dbcache.Store
	ttl       dbcache.TTLReader
	prefix    string
	origin    dbcache.Store // nil without Config.Origin
	originTTL dbcache.TTLReader

	// memo is, per key, the tags of the entry this Cache last wrote or
	// read under it, so that the next read can fetch the entry and those
	// tags' versions in one GetMany (one statement on a *dbcache.Cache)
	// instead of two reads. It only guides what is fetched: a read
	// checks the header it gets, and fetches the versions of any tag the
	// memo did not name. At most memoMax keys and memoMaxBytes of keys
	// and tags; full, it starts again.
	memoMu    sync.Mutex
	memo      map[string][]string
	memoBytes int
}

// memoMax and memoMaxBytes bound the memo.
const (
	memoMax      = 10_000
	memoMaxBytes = 4 << 20
)

func (c *Cache) remember(key string, tvs []tagVersion) {
	ts := make([]string, len(tvs))
	for i, tv := range tvs {
		ts[i] = tv.tag
	}
	c.memoMu.Lock()
	defer c.memoMu.Unlock()
	if old, ok := c.memo[key]; ok {
		c.memoBytes -= memoSize(key, old)
		delete(c.memo, key)
	}
	if len(ts) == 0 {
		return
	}
	n := memoSize(key, ts)
	if c.memo == nil || len(c.memo) >= memoMax || c.memoBytes+n > memoMaxBytes {
		c.memo, c.memoBytes = make(map[string][]string), 0
	}
	c.memo[key] = ts
	c.memoBytes += n
}

// memoSize is what the memo counts for key and its tags.
func memoSize(key string, ts []string) int {
	n := len(key) + 16*len(ts)
	for _, t := range ts {
		n += len(t)
	}
	return n
}

func (c *Cache) recall(key string) []string {
	c.memoMu.Lock()
	defer c.memoMu.Unlock()
	return c.memo[key]
}

// New returns a tagged cache over store, which must also be a
// dbcache.TTLReader (a *dbcache.Cache, a near cache over one, a sharded
// cache, memstore's Store are). The store holds both the entries and the
// tags' versions.
func New(store dbcache.Store, cfg *Config) (*Cache, error) {
	if store == nil {
		return nil, errors.New("tags: store is nil")
	}
	ttl, ok := store.(dbcache.TTLReader)
	if !ok {
		return nil, fmt.Errorf("tags: the store (%T) is not a dbcache.TTLReader", store)
	}
	var c Config
	if cfg != nil {
		c = *cfg
	}
	if c.Prefix == "" {
		c.Prefix = PrefixDefault
	}
	out := &Cache{store: store, ttl: ttl, prefix: c.Prefix, origin: c.Origin}
	if c.Origin != nil {
		if out.originTTL, ok = c.Origin.(dbcache.TTLReader); !ok {
			return nil, fmt.Errorf("tags: Config.Origin (%T) is not a dbcache.TTLReader", c.Origin)
		}
	}
	return out, nil
}

// Store returns the store the cache is over.
func (c *Cache) Store() dbcache.Store { return c.store }

// checkKey refuses a key in the tags' own key space.
func (c *Cache) checkKey(key string) error {
	if strings.HasPrefix(key, c.prefix) {
		return fmt.Errorf("%w: the key starts with the tags' prefix %q", dbcache.ErrInvalidKey, c.prefix)
	}
	return nil
}

// normalize checks tags and returns them sorted, without duplicates.
func normalize(tags []string) ([]string, error) {
	for _, t := range tags {
		if err := validTag(t); err != nil {
			return nil, err
		}
	}
	out := slices.Clone(tags)
	slices.Sort(out)
	return slices.Compact(out), nil
}

func validTag(t string) error {
	switch {
	case t == "":
		return fmt.Errorf("%w: empty", ErrInvalidTag)
	case len(t) > MaxTagBytes:
		return fmt.Errorf("%w: %d bytes, at most %d", ErrInvalidTag, len(t), MaxTagBytes)
	case !utf8.ValidString(t):
		return fmt.Errorf("%w: not UTF-8", ErrInvalidTag)
	case strings.ContainsFunc(t, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }):
		return fmt.Errorf("%w: holds a space or a control character", ErrInvalidTag)
	}
	return nil
}

func newVersion() []byte {
	v := make([]byte, versionBytes)
	_, _ = rand.Read(v) // crypto/rand.Read never fails (Go 1.24+)
	return v
}

// versions returns each tag's current version, making one for a tag
// that has none. Two writers making one race through GetOrSet: both get
// the first stored. With Config.Origin the versions are Origin's, so a
// write through a near cache never uses a copy of a deleted version.
func (c *Cache) versions(ctx context.Context, tags []string) ([]tagVersion, error) {
	if len(tags) == 0 {
		return nil, nil
	}
	st := c.store
	if c.origin != nil {
		st = c.origin
	}
	keys := make([]string, len(tags))
	for i, t := range tags {
		keys[i] = c.prefix + t
	}
	got, err := st.GetMany(ctx, keys)
	if err != nil {
		return nil, fmt.Errorf("tags: read the tags' versions: %w", err)
	}
	tvs := make([]tagVersion, len(tags))
	for i, t := range tags {
		v, ok := got[keys[i]]
		if !ok {
			if v, err = st.GetOrSet(ctx, keys[i], newVersion(), dbcache.Forever); err != nil {
				return nil, fmt.Errorf("tags: make a tag's version: %w", err)
			}
		}
		if len(v) != versionBytes {
			// Not a version (crafted, or another writer's): a new one.
			// No entry can carry what is stored now, so none is lost.
			v = newVersion()
			if err := st.Set(ctx, keys[i], v, dbcache.Forever); err != nil {
				return nil, fmt.Errorf("tags: replace a tag's damaged version: %w", err)
			}
		}
		tvs[i] = tagVersion{tag: t, version: v}
	}
	return tvs, nil
}

// Set stores value under key with tags, replacing any entry (and its
// tags). A write with no tag stores an entry that only Delete, expiry
// and culling remove. An invalid tag is ErrInvalidTag, more than MaxTags
// is ErrTooManyTags, and then nothing is written.
func (c *Cache) Set(ctx context.Context, key string, value []byte, timeout dbcache.Timeout, tags ...string) error {
	if err := c.checkKey(key); err != nil {
		return err
	}
	ts, err := normalize(tags)
	if err != nil {
		return err
	}
	if len(ts) > MaxTags {
		return fmt.Errorf("%w: %d distinct tags, at most %d", ErrTooManyTags, len(ts), MaxTags)
	}
	tvs, err := c.versions(ctx, ts)
	if err != nil {
		return err
	}
	if err := c.store.Set(ctx, key, encode(tvs, value), timeout); err != nil {
		return err
	}
	c.remember(key, tvs)
	return nil
}

// Get returns the value stored under key, or dbcache.ErrMiss when there
// is none or a tag it carries was invalidated since it was written. A
// stored value that is not a tagged entry, or whose header is damaged, is
// ErrCorrupt. A key this Cache last wrote or read with tags is read with
// its tags' versions in one GetMany; any other, with a second read when
// its entry has tags. A miss is what one statement saw (see settle).
func (c *Cache) Get(ctx context.Context, key string) ([]byte, error) {
	if err := c.checkKey(key); err != nil {
		return nil, err
	}
	var (
		raw     []byte
		current map[string][]byte
	)
	if ts := c.recall(key); len(ts) > 0 {
		keys := make([]string, 0, 1+len(ts))
		keys = append(keys, key)
		for _, t := range ts {
			keys = append(keys, c.prefix+t)
		}
		got, err := c.store.GetMany(ctx, keys)
		if err != nil {
			return nil, err
		}
		var ok bool
		if raw, ok = got[key]; !ok {
			return nil, dbcache.ErrMiss
		}
		delete(got, key)
		for _, k := range keys[1:] {
			if _, ok := got[k]; !ok {
				got[k] = nil // read, and absent: no version matches
			}
		}
		current = got
	} else {
		var err error
		if raw, err = c.store.Get(ctx, key); err != nil {
			return nil, err
		}
	}
	tvs, v, err := decode(raw)
	if err != nil {
		return nil, err
	}
	c.remember(key, tvs)
	oneRead := c.covers(tvs, current)
	if err := c.check(ctx, c.store, tvs, current); !errors.Is(err, dbcache.ErrMiss) {
		if err != nil {
			return nil, err
		}
		return v, nil
	}
	if oneRead && c.origin == nil {
		return nil, dbcache.ErrMiss // one statement saw the entry and its versions
	}
	settled, err := c.settle(ctx, []string{key})
	if err != nil {
		return nil, err
	}
	if v, ok := settled[key]; ok {
		return v, nil
	}
	return nil, dbcache.ErrMiss
}

// covers reports whether current holds every tag of tvs, read with the
// entry.
func (c *Cache) covers(tvs []tagVersion, current map[string][]byte) bool {
	for _, tv := range tvs {
		if _, ok := current[c.prefix+tv.tag]; !ok {
			return false
		}
	}
	return true
}

// settleAttempts bounds settle's reads.
const settleAttempts = 3

// settle decides keys whose read did not match their versions, reading
// each with its tags' versions in one GetMany, so that a miss is what one
// statement saw: an entry read before its versions can have been replaced,
// between the two reads, by one without a tag that was then invalidated,
// and that entry was never absent. It reads from Config.Origin when set.
// A key whose entry is rewritten with other tags before every one of
// settleAttempts reads is a miss.
func (c *Cache) settle(ctx context.Context, keys []string) (map[string][]byte, error) {
	st := c.store
	if c.origin != nil {
		st = c.origin
	}
	out := map[string][]byte{}
	tagsOf := map[string][]string{}
	for _, k := range keys {
		tagsOf[k] = c.recall(k)
	}
	pending := keys
	for attempt := 0; attempt < settleAttempts && len(pending) > 0; attempt++ {
		req := slices.Clone(pending)
		var tagKeys []string
		for _, k := range pending {
			for _, t := range tagsOf[k] {
				tagKeys = append(tagKeys, c.prefix+t)
			}
		}
		slices.Sort(tagKeys)
		tagKeys = slices.Compact(tagKeys)
		got, err := st.GetMany(ctx, append(req, tagKeys...))
		if err != nil {
			return nil, err
		}
		current := make(map[string][]byte, len(tagKeys))
		for _, k := range tagKeys {
			current[k] = got[k] // nil when absent: no version matches
		}
		var next []string
		for _, k := range pending {
			raw, ok := got[k]
			if !ok {
				continue // absent: a miss
			}
			tvs, v, err := decode(raw)
			if err != nil {
				return nil, err
			}
			c.remember(k, tvs)
			if !c.covers(tvs, current) {
				tagsOf[k] = tagNames(tvs)
				next = append(next, k)
				continue
			}
			if c.valid(tvs, current) {
				out[k] = v
			}
		}
		pending = next
	}
	return out, nil
}

func tagNames(tvs []tagVersion) []string {
	out := make([]string, len(tvs))
	for i, tv := range tvs {
		out[i] = tv.tag
	}
	return out
}

// GetWithTTL is Get that also returns the entry's remaining lifetime, as
// dbcache.TTLReader's GetWithTTL.
func (c *Cache) GetWithTTL(ctx context.Context, key string) ([]byte, dbcache.Timeout, error) {
	if err := c.checkKey(key); err != nil {
		return nil, dbcache.Timeout{}, err
	}
	st, ttlr := c.store, c.ttl
	for range settleAttempts {
		raw, ttl, err := ttlr.GetWithTTL(ctx, key)
		if err != nil {
			return nil, dbcache.Timeout{}, err
		}
		tvs, v, err := decode(raw)
		if err != nil {
			return nil, dbcache.Timeout{}, err
		}
		c.remember(key, tvs)
		err = c.check(ctx, st, tvs, nil)
		if err == nil {
			return v, ttl, nil
		}
		if !errors.Is(err, dbcache.ErrMiss) {
			return nil, dbcache.Timeout{}, err
		}
		// A mismatch from two reads: settle it in one; a hit there means
		// the entry changed, and is read again with its lifetime.
		settled, err := c.settle(ctx, []string{key})
		if err != nil {
			return nil, dbcache.Timeout{}, err
		}
		if _, ok := settled[key]; !ok {
			return nil, dbcache.Timeout{}, dbcache.ErrMiss
		}
		if c.origin != nil {
			st, ttlr = c.origin, c.originTTL
		}
	}
	return nil, dbcache.Timeout{}, dbcache.ErrMiss
}

// GetMany returns the live, valid entries among keys, keyed by the
// caller's keys, in one read of the store when this Cache last wrote or
// read every one of them, and two otherwise, whatever the number of keys,
// and one more (of the keys that missed) to settle misses. Any entry that
// is not a tagged entry or is damaged makes it ErrCorrupt.
func (c *Cache) GetMany(ctx context.Context, keys []string) (map[string][]byte, error) {
	for _, k := range keys {
		if err := c.checkKey(k); err != nil {
			return nil, err
		}
	}
	out, invalid, err := c.getMany(ctx, keys)
	if err != nil || len(invalid) == 0 {
		return out, err
	}
	settled, err := c.settle(ctx, invalid)
	if err != nil {
		return nil, err
	}
	maps.Copy(out, settled)
	return out, nil
}

// getMany reads keys and their versions, with the memo's tags in the
// first read, and returns the valid entries and the keys whose entries did
// not match their versions in two reads (or, with Config.Origin, in any).
func (c *Cache) getMany(ctx context.Context, keys []string) (map[string][]byte, []string, error) {
	want := slices.Clone(keys)
	var memoTags []string
	for _, k := range keys {
		for _, t := range c.recall(k) {
			memoTags = append(memoTags, c.prefix+t)
		}
	}
	slices.Sort(memoTags)
	memoTags = slices.Compact(memoTags)
	got, err := c.store.GetMany(ctx, append(want, memoTags...))
	if err != nil {
		return nil, nil, err
	}
	current := make(map[string][]byte, len(memoTags))
	for _, k := range memoTags {
		current[k] = got[k] // nil when absent: no version matches
	}
	type entry struct {
		tvs     []tagVersion
		v       []byte
		oneRead bool
	}
	entries := make(map[string]entry, len(keys))
	var missing []string
	for _, k := range keys {
		raw, ok := got[k]
		if !ok {
			continue
		}
		if _, done := entries[k]; done {
			continue
		}
		tvs, v, err := decode(raw)
		if err != nil {
			return nil, nil, err
		}
		c.remember(k, tvs)
		entries[k] = entry{tvs, v, c.covers(tvs, current)}
		for _, tv := range tvs {
			if _, ok := current[c.prefix+tv.tag]; !ok {
				missing = append(missing, c.prefix+tv.tag)
			}
		}
	}
	if len(missing) > 0 {
		slices.Sort(missing)
		missing = slices.Compact(missing)
		more, err := c.store.GetMany(ctx, missing)
		if err != nil {
			return nil, nil, fmt.Errorf("tags: read the tags' versions: %w", err)
		}
		for _, k := range missing {
			current[k] = more[k]
		}
	}
	out := make(map[string][]byte, len(entries))
	var invalid []string
	for k, e := range entries {
		switch {
		case c.valid(e.tvs, current):
			out[k] = e.v
		case !e.oneRead || c.origin != nil:
			invalid = append(invalid, k)
		}
	}
	return out, invalid, nil
}

// check returns dbcache.ErrMiss unless every tag still has the version
// the entry was written with, reading from st the versions current lacks.
func (c *Cache) check(ctx context.Context, st dbcache.Store, tvs []tagVersion, current map[string][]byte) error {
	var keys []string
	for _, tv := range tvs {
		k := c.prefix + tv.tag
		if _, ok := current[k]; !ok {
			keys = append(keys, k)
		}
	}
	if len(keys) > 0 {
		got, err := st.GetMany(ctx, keys)
		if err != nil {
			return fmt.Errorf("tags: read the tags' versions: %w", err)
		}
		if current == nil {
			current = got
		} else {
			maps.Copy(current, got)
		}
	}
	if !c.valid(tvs, current) {
		return dbcache.ErrMiss
	}
	return nil
}

func (c *Cache) valid(tvs []tagVersion, current map[string][]byte) bool {
	for _, tv := range tvs {
		v, ok := current[c.prefix+tv.tag]
		if !ok || len(v) != versionBytes || !bytes.Equal(v, tv.version) {
			return false
		}
	}
	return true
}

// Delete removes key's entry, tagged or not.
func (c *Cache) Delete(ctx context.Context, key string) error {
	if err := c.checkKey(key); err != nil {
		return err
	}
	_, err := c.store.Delete(ctx, key)
	return err
}

// Invalidate makes every entry carrying any of tags a miss, in one write
// of the store (one statement on a *dbcache.Cache) whatever the number of
// entries: it deletes the tags' versions, so an entry written before no
// longer matches them. An invalid tag is ErrInvalidTag and nothing is
// invalidated; no tag at all does nothing.
func (c *Cache) Invalidate(ctx context.Context, tags ...string) error {
	ts, err := normalize(tags)
	if err != nil {
		return err
	}
	if len(ts) == 0 {
		return nil
	}
	keys := make([]string, len(ts))
	for i, t := range ts {
		keys[i] = c.prefix + t
	}
	if _, err := c.store.DeleteMany(ctx, keys); err != nil {
		return fmt.Errorf("tags: invalidate: %w", err)
	}
	return nil
}

// Clear removes every entry of the store, tags' versions included.
func (c *Cache) Clear(ctx context.Context) error { return c.store.Clear(ctx) }
