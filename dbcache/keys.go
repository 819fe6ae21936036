package dbcache

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"unicode/utf8"
)

// MakeKey returns the stored key for key at the view's version: Django's
// make_key. It does not validate; see ValidateKey.
func (c *Cache) MakeKey(key string) string {
	return c.s.cfg.KeyFunc(key, c.s.cfg.KeyPrefix, c.version)
}

// ValidateKey checks a made key as every operation does: Django's
// validate_key plus what PostgreSQL needs (see KeyValidator, whose rules
// it applies with Config.KeyCheck, Config.LogKeys and Config.Logger).
func (c *Cache) ValidateKey(ctx context.Context, madeKey string) error {
	return c.s.keyCheck.Validate(ctx, madeKey)
}

// KeyValidator validates made keys as a Cache does, so that a Store of
// another kind (package memstore's, or one of a user's) refuses the keys a
// Cache refuses and warns as it warns. The zero value is a Cache's
// default: KeyCheckWarn, logging to slog.Default() without the key.
type KeyValidator struct {
	// Check says what to do with a key memcached could not store.
	// Defaults to KeyCheckWarn.
	Check KeyCheck
	// LogKeys quotes the key in the warning, as Django's does. Defaults
	// to false.
	LogKeys bool
	// Logger receives the warnings. Defaults to slog.Default().
	Logger *slog.Logger
}

// Validate returns an *InvalidKeyError (matching ErrInvalidKey) for a key
// PostgreSQL cannot store: a NUL byte, invalid UTF-8, or more than
// MaxKeyBytes bytes. A key memcached could not store (KeyWarnings has
// something to say about it) is logged, one warning line per problem, as
// Django warns once per memcache_key_warnings message; refused with
// ErrInvalidKey, every problem in its Reason; or let through, as Check
// says.
func (v KeyValidator) Validate(ctx context.Context, madeKey string) error {
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
		if v.Check == KeyCheckOff || (!control && len(madeKey) <= MemcachedMaxKeyLength) {
			return nil
		}
	} else if err := storable(madeKey); err != nil {
		return err
	}
	if v.Check == KeyCheckOff {
		return nil
	}
	warnings := KeyWarnings(madeKey)
	if len(warnings) == 0 {
		return nil
	}
	if v.Check == KeyCheckError {
		reasons := make([]string, len(warnings))
		for i, w := range warnings {
			reasons[i] = w.Message(madeKey, true)
		}
		return &InvalidKeyError{MadeKey: madeKey, Reason: strings.Join(reasons, "; ")}
	}
	log := v.Logger
	if log == nil {
		log = slog.Default()
	}
	for _, w := range warnings {
		// The log line quotes the key only with LogKeys.
		if v.LogKeys {
			log.WarnContext(ctx, "dbcache: "+w.Message(madeKey, true), "key", madeKey)
		} else {
			log.WarnContext(ctx, "dbcache: "+w.Message(madeKey, false))
		}
	}
	return nil
}

// storable returns an *InvalidKeyError for a made key PostgreSQL cannot
// store.
func storable(madeKey string) error {
	switch {
	case !utf8.ValidString(madeKey):
		return invalidKey(madeKey, "not valid UTF-8 (PostgreSQL text cannot hold it)")
	case strings.IndexByte(madeKey, 0) >= 0:
		return invalidKey(madeKey, "contains a NUL byte (PostgreSQL text cannot hold it)")
	case len(madeKey) > MaxKeyBytes:
		return invalidKey(madeKey, fmt.Sprintf("%d bytes with the key prefix and version, over the %d-byte limit", len(madeKey), MaxKeyBytes))
	}
	return nil
}

// KeyWarning is one reason memcached could not store a key.
type KeyWarning int

const (
	// KeyTooLong: more than MemcachedMaxKeyLength characters.
	KeyTooLong KeyWarning = iota + 1
	// KeyHasControlChars: a space, a control character or DEL.
	KeyHasControlChars
)

// Message is Django's warning text for w about key, quoting the key when
// quote is set (Django always quotes it; a Cache does only with
// Config.LogKeys).
func (w KeyWarning) Message(key string, quote bool) string {
	q := ""
	if quote {
		q = fmt.Sprintf(": %q", key)
	}
	switch w {
	case KeyTooLong:
		return fmt.Sprintf("Cache key will cause errors if used with memcached%s (longer than %d)", q, MemcachedMaxKeyLength)
	case KeyHasControlChars:
		return "Cache key contains characters that will cause errors if used with memcached" + q
	}
	return "unknown key warning"
}

// KeyWarnings is Django's memcache_key_warnings: every reason memcached
// could not store key, in Django's order (its length, then its
// characters), none for a portable key. Lengths count characters (runes),
// as Django does.
func KeyWarnings(key string) []KeyWarning {
	var out []KeyWarning
	if utf8.RuneCountInString(key) > MemcachedMaxKeyLength {
		out = append(out, KeyTooLong)
	}
	for _, r := range key {
		if r < 33 || r == 127 {
			out = append(out, KeyHasControlChars)
			break
		}
	}
	return out
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
