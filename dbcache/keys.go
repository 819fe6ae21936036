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
	msg := memcachedKeyWarning(madeKey)
	if msg == "" {
		return nil
	}
	if c.s.cfg.KeyCheck == KeyCheckError {
		return &InvalidKeyError{MadeKey: madeKey, Reason: msg}
	}
	c.s.cfg.Logger.WarnContext(ctx, "dbcache: "+msg, "key", madeKey)
	return nil
}

// memcachedKeyWarning is Django's memcache_key_warnings: the message for the
// first portability problem of key, or "". Lengths count characters (runes),
// as Django does.
func memcachedKeyWarning(key string) string {
	if n := utf8.RuneCountInString(key); n > MemcachedMaxKeyLength {
		return fmt.Sprintf("Cache key will cause errors if used with memcached: %q (longer than %d)", key, MemcachedMaxKeyLength)
	}
	for _, r := range key {
		if r < 33 || r == 127 {
			return fmt.Sprintf("Cache key contains characters that will cause errors if used with memcached: %q", key)
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

// keys makes and validates many keys. made[i] is the made key of keys[i];
// back maps each distinct made key to the caller keys that made it (a custom
// KeyFunc may map two keys to one).
func (c *Cache) keys(ctx context.Context, keys []string) (made []string, back map[string][]string, err error) {
	made = make([]string, 0, len(keys))
	back = make(map[string][]string, len(keys))
	for _, k := range keys {
		mk, err := c.key(ctx, k)
		if err != nil {
			return nil, nil, err
		}
		if _, dup := back[mk]; !dup {
			made = append(made, mk)
		}
		back[mk] = append(back[mk], k)
	}
	return made, back, nil
}
