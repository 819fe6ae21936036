package tags

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"slices"
	"strings"
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
}

// Cache is a tagged cache over a dbcache.Store. It is safe for concurrent
// use.
type Cache struct {
	store  dbcache.Store
	ttl    dbcache.TTLReader
	prefix string
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
	return &Cache{store: store, ttl: ttl, prefix: c.Prefix}, nil
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
// the first stored.
func (c *Cache) versions(ctx context.Context, tags []string) ([]tagVersion, error) {
	if len(tags) == 0 {
		return nil, nil
	}
	keys := make([]string, len(tags))
	for i, t := range tags {
		keys[i] = c.prefix + t
	}
	got, err := c.store.GetMany(ctx, keys)
	if err != nil {
		return nil, fmt.Errorf("tags: read the tags' versions: %w", err)
	}
	tvs := make([]tagVersion, len(tags))
	for i, t := range tags {
		v, ok := got[keys[i]]
		if !ok {
			if v, err = c.store.GetOrSet(ctx, keys[i], newVersion(), dbcache.Forever); err != nil {
				return nil, fmt.Errorf("tags: make a tag's version: %w", err)
			}
		}
		if len(v) != versionBytes {
			// Not a version (crafted, or another writer's): a new one.
			// No entry can carry what is stored now, so none is lost.
			v = newVersion()
			if err := c.store.Set(ctx, keys[i], v, dbcache.Forever); err != nil {
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
	return c.store.Set(ctx, key, encode(tvs, value), timeout)
}

// Get returns the value stored under key, or dbcache.ErrMiss when there
// is none or a tag it carries was invalidated since it was written. A
// stored value that is not a tagged entry, or whose header is damaged, is
// ErrCorrupt.
func (c *Cache) Get(ctx context.Context, key string) ([]byte, error) {
	if err := c.checkKey(key); err != nil {
		return nil, err
	}
	raw, err := c.store.Get(ctx, key)
	if err != nil {
		return nil, err
	}
	tvs, v, err := decode(raw)
	if err != nil {
		return nil, err
	}
	if err := c.check(ctx, tvs); err != nil {
		return nil, err
	}
	return v, nil
}

// GetWithTTL is Get that also returns the entry's remaining lifetime, as
// dbcache.TTLReader's GetWithTTL.
func (c *Cache) GetWithTTL(ctx context.Context, key string) ([]byte, dbcache.Timeout, error) {
	if err := c.checkKey(key); err != nil {
		return nil, dbcache.Timeout{}, err
	}
	raw, ttl, err := c.ttl.GetWithTTL(ctx, key)
	if err != nil {
		return nil, dbcache.Timeout{}, err
	}
	tvs, v, err := decode(raw)
	if err != nil {
		return nil, dbcache.Timeout{}, err
	}
	if err := c.check(ctx, tvs); err != nil {
		return nil, dbcache.Timeout{}, err
	}
	return v, ttl, nil
}

// GetMany returns the live, valid entries among keys, keyed by the
// caller's keys, in two reads of the store whatever the number of keys.
// Any entry that is not a tagged entry or is damaged makes it ErrCorrupt.
func (c *Cache) GetMany(ctx context.Context, keys []string) (map[string][]byte, error) {
	for _, k := range keys {
		if err := c.checkKey(k); err != nil {
			return nil, err
		}
	}
	raws, err := c.store.GetMany(ctx, keys)
	if err != nil {
		return nil, err
	}
	type entry struct {
		tvs []tagVersion
		v   []byte
	}
	entries := make(map[string]entry, len(raws))
	var tagKeys []string
	for k, raw := range raws {
		tvs, v, err := decode(raw)
		if err != nil {
			return nil, err
		}
		entries[k] = entry{tvs, v}
		for _, tv := range tvs {
			tagKeys = append(tagKeys, c.prefix+tv.tag)
		}
	}
	var current map[string][]byte
	if len(tagKeys) > 0 {
		slices.Sort(tagKeys)
		if current, err = c.store.GetMany(ctx, slices.Compact(tagKeys)); err != nil {
			return nil, fmt.Errorf("tags: read the tags' versions: %w", err)
		}
	}
	out := make(map[string][]byte, len(entries))
	for k, e := range entries {
		if c.valid(e.tvs, current) {
			out[k] = e.v
		}
	}
	return out, nil
}

// check returns dbcache.ErrMiss unless every tag still has the version
// the entry was written with.
func (c *Cache) check(ctx context.Context, tvs []tagVersion) error {
	if len(tvs) == 0 {
		return nil
	}
	keys := make([]string, len(tvs))
	for i, tv := range tvs {
		keys[i] = c.prefix + tv.tag
	}
	current, err := c.store.GetMany(ctx, keys)
	if err != nil {
		return fmt.Errorf("tags: read the tags' versions: %w", err)
	}
	if !c.valid(tvs, current) {
		return dbcache.ErrMiss
	}
	return nil
}

func (c *Cache) valid(tvs []tagVersion, current map[string][]byte) bool {
	for _, tv := range tvs {
		v, ok := current[c.prefix+tv.tag]
		if !ok || !bytes.Equal(v, tv.version) {
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
