package dbcache

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"
)

// MakeKey returns the stored key for key at the view's version: Django's
// make_key. It does not validate; see ValidateKey.
func (c *Cache) MakeKey(key string) string {
	return c.s.cfg.KeyFunc(key, c.s.cfg.KeyPrefix, c.version)
}

// ValidateKey checks a made key as every operation does: Django's
// validate_key plus what PostgreSQL needs. It returns ErrInvalidKey (wrapped,
// with the reason) for a key PostgreSQL cannot store: a NUL byte, invalid
// UTF-8, or more than MaxKeyBytes bytes. A key memcached could not store
// (over 250 characters, or a space or control character) is logged as a
// warning, refused with ErrInvalidKey, or let through, as Config.KeyCheck
// says.
func (c *Cache) ValidateKey(ctx context.Context, madeKey string) error {
	// The common key is ASCII: one pass over its bytes decides everything.
	// Anything else takes the general path below.
	ascii, control := true, false
	for i := 0; i < len(madeKey); i++ {
		b := madeKey[i]
		if b >= utf8.RuneSelf || b == 0 {
			ascii = false
			break
		}
		if b < 33 || b == 127 {
			control = true
		}
	}
	if ascii {
		if len(madeKey) > MaxKeyBytes {
			return invalidKey(madeKey, fmt.Sprintf("%d bytes with the key prefix and version, over the %d-byte limit", len(madeKey), MaxKeyBytes))
		}
		if c.s.cfg.KeyCheck == KeyCheckOff || (!control && len(madeKey) <= MemcachedMaxKeyLength) {
			return nil
		}
	}
	switch {
	case !utf8.ValidString(madeKey):
		return invalidKey(madeKey, "not valid UTF-8 (PostgreSQL text cannot hold it)")
	case strings.IndexByte(madeKey, 0) >= 0:
		return invalidKey(madeKey, "contains a NUL byte (PostgreSQL text cannot hold it)")
	case len(madeKey) > MaxKeyBytes:
		return invalidKey(madeKey, fmt.Sprintf("%d bytes with the key prefix and version, over the %d-byte limit", len(madeKey), MaxKeyBytes))
	}
	if c.s.cfg.KeyCheck == KeyCheckOff {
		return nil
	}
	if c.s.cfg.KeyCheck == KeyCheckError {
		if msg := memcachedKeyWarning(madeKey, true); msg != "" {
			return &InvalidKeyError{MadeKey: madeKey, Reason: msg}
		}
		return nil
	}
	// The log line quotes the key only with Config.LogKeys.
	msg := memcachedKeyWarning(madeKey, c.s.cfg.LogKeys)
	if msg == "" {
		return nil
	}
	if c.s.cfg.LogKeys {
		c.s.cfg.Logger.WarnContext(ctx, "dbcache: "+msg, "key", madeKey)
	} else {
		c.s.cfg.Logger.WarnContext(ctx, "dbcache: "+msg)
	}
	return nil
}

// memcachedKeyWarning is Django's memcache_key_warnings: the message for the
// first portability problem of key, or "", quoting the key when quote is
// set. Lengths count characters (runes), as Django does.
func memcachedKeyWarning(key string, quote bool) string {
	q := ""
	if quote {
		q = fmt.Sprintf(": %q", key)
	}
	if n := utf8.RuneCountInString(key); n > MemcachedMaxKeyLength {
		return fmt.Sprintf("Cache key will cause errors if used with memcached%s (longer than %d)", q, MemcachedMaxKeyLength)
	}
	for _, r := range key {
		if r < 33 || r == 127 {
			return "Cache key contains characters that will cause errors if used with memcached" + q
		}
	}
	return ""
}

// key makes and validates a key; an invalid one's error names the caller's
// key.
func (c *Cache) key(ctx context.Context, key string) (string, error) {
	k := c.MakeKey(key)
	if err := c.ValidateKey(ctx, k); err != nil {
		var ik *InvalidKeyError
		if errors.As(err, &ik) {
			ik.Key = key
		}
		return "", err
	}
	return k, nil
}

// keySet is many caller keys made and validated: made holds each distinct
// made key once, first[i] the first caller key that made made[i], and more
// any further caller keys that made the same stored key (only a custom
// KeyFunc does that; nil when none did).
type keySet struct {
	made  []string
	first []string
	index map[string]int // made key -> its position in made
	more  map[string][]string
}

// last is the last caller key (in the order given) that made made[i].
func (ks *keySet) last(i int) string {
	if extra := ks.more[ks.made[i]]; len(extra) > 0 {
		return extra[len(extra)-1]
	}
	return ks.first[i]
}

// keys makes and validates many keys.
func (c *Cache) keys(ctx context.Context, keys []string) (*keySet, error) {
	ks := &keySet{
		made:  make([]string, 0, len(keys)),
		first: make([]string, 0, len(keys)),
		index: make(map[string]int, len(keys)),
	}
	for _, k := range keys {
		mk, err := c.key(ctx, k)
		if err != nil {
			return nil, err
		}
		if _, dup := ks.index[mk]; dup {
			if ks.more == nil {
				ks.more = map[string][]string{}
			}
			ks.more[mk] = append(ks.more[mk], k)
			continue
		}
		ks.index[mk] = len(ks.made)
		ks.made = append(ks.made, mk)
		ks.first = append(ks.first, k)
	}
	return ks, nil
}
