// Package encryption encrypts cache values at rest with AES-GCM (the
// standard library's), as a codec.Codec wrapper: the table, its WAL, its
// backups and its replicas hold ciphertext, and only processes that have
// the app's keys can read or forge values.
//
//	ring, err := encryption.NewKeyring(encryption.Key{ID: 1, Secret: secret1}, encryption.Key{ID: 2, Secret: secret2})
//	users, err := typed.New[User](cache, &typed.Config[User]{
//		Codec: encryption.Wrap(codec.JSON[User](), ring),
//	})
//
// # Keys and rotation
//
// The application supplies the keys (from its secret store; this package
// never reads the environment or a file) as a Keyring: each Key has an ID
// that is written in clear in every value's header, and a 16-, 24- or
// 32-byte secret (AES-128, -192 or -256). The last key of the ring is the
// newest: it encrypts every write, and every key of the ring decrypts. To
// rotate, deploy a ring with the new key appended; once every process runs
// it and the entries written under the old key have expired (or been
// rewritten), drop the old key. An entry whose key is no longer in the
// ring fails to decode with ErrDecrypt, which typed.Config's
// MissOnDecodeError turns into a miss.
//
// # What a value is bound to
//
// The caller's key is authenticated with each value (AES-GCM additional
// data), so a value copied, by someone who can write the table, under
// another key does not decrypt there. The key bound is the caller's key,
// not the stored one (prefix:version:key): dbcache's IncrVersion moves an
// entry to another version, and it must still decrypt. So a value copied to
// the same caller key under another prefix or version of the same table
// does decrypt; give caches that must not share values different keyrings.
// Nor does anything stop replay: an old ciphertext written back under its
// own key decrypts, as the value that key once had.
//
// # Limits
//
// Each value gets a random 96-bit nonce, so one key may encrypt at most
// 2^32 values (NIST SP 800-38D's bound for random nonces): at 1,000 writes
// a second that is about 50 days. Rotate keys well within it. A value
// costs 33 bytes more: a format byte, the key ID (4 bytes), the nonce (12)
// and the tag (16).
package encryption

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"

	"github.com/dbcache/dbcache/codec"
)

const (
	// format is the first byte of every value this package writes.
	format = 0xE1

	nonceSize  = 12
	tagSize    = 16
	headerSize = 1 + 4 + nonceSize

	// Overhead is how many bytes encryption adds to a value.
	Overhead = headerSize + tagSize
)

// ErrDecrypt is matched (errors.Is) by every *DecryptError: a stored value
// that is not one this package wrote, was written under a key the ring
// does not have, was altered, or was copied under another cache key.
var ErrDecrypt = errors.New("encryption: value does not decrypt")

// DecryptError says why a value did not decrypt. It never says more about
// the plaintext than that.
type DecryptError struct {
	// KeyID is the key ID in the value's header (0 when there is no
	// header).
	KeyID uint32
	// Reason is one of "not an encrypted value", "unknown key id",
	// "authentication failed".
	Reason string
}

func (e *DecryptError) Error() string {
	if e.KeyID == 0 {
		return "encryption: value does not decrypt: " + e.Reason
	}
	return fmt.Sprintf("encryption: value does not decrypt: %s (key id %d)", e.Reason, e.KeyID)
}

// Is reports whether target is ErrDecrypt.
func (e *DecryptError) Is(target error) bool { return target == ErrDecrypt }

// ErrorCode is "decrypt": what metrics, spans and logs record of it (a
// dbcache.ErrorCoder).
func (e *DecryptError) ErrorCode() string { return "decrypt" }

// Key is one encryption key.
type Key struct {
	// ID names the key in every value it encrypts; 1 or more, unique in
	// the ring. It is not secret.
	ID uint32
	// Secret is the AES key: 16, 24 or 32 random bytes (AES-128, -192,
	// -256). Keep it where the app keeps its other secrets.
	Secret []byte
}

// Keyring holds the keys that decrypt, and the one that encrypts. It is
// immutable and safe for concurrent use.
type Keyring struct {
	write uint32
	aeads map[uint32]cipher.AEAD
}

// NewKeyring returns a ring of keys; the last is the newest and encrypts
// every write. It returns an error for no keys, an ID of 0, a repeated ID
// or a secret that is not 16, 24 or 32 bytes long. The secrets are copied.
func NewKeyring(keys ...Key) (*Keyring, error) {
	if len(keys) == 0 {
		return nil, errors.New("encryption: no keys")
	}
	kr := &Keyring{aeads: make(map[uint32]cipher.AEAD, len(keys))}
	for _, k := range keys {
		if k.ID == 0 {
			return nil, errors.New("encryption: key id 0 is reserved; number keys from 1")
		}
		if _, dup := kr.aeads[k.ID]; dup {
			return nil, fmt.Errorf("encryption: key id %d appears twice", k.ID)
		}
		switch len(k.Secret) {
		case 16, 24, 32:
		default:
			return nil, fmt.Errorf("encryption: key %d: secret is %d bytes; AES needs 16, 24 or 32", k.ID, len(k.Secret))
		}
		block, err := aes.NewCipher(slices.Clone(k.Secret))
		if err != nil {
			return nil, fmt.Errorf("encryption: key %d: %w", k.ID, err)
		}
		aead, err := cipher.NewGCM(block)
		if err != nil {
			return nil, fmt.Errorf("encryption: key %d: %w", k.ID, err)
		}
		kr.aeads[k.ID] = aead
	}
	kr.write = keys[len(keys)-1].ID
	return kr, nil
}

// WriteKeyID returns the ID of the key that encrypts.
func (kr *Keyring) WriteKeyID() uint32 { return kr.write }

// Seal encrypts plaintext for the caller's key with the newest key.
func (kr *Keyring) Seal(key string, plaintext []byte) ([]byte, error) {
	out := make([]byte, headerSize, headerSize+len(plaintext)+tagSize)
	out[0] = format
	binary.BigEndian.PutUint32(out[1:5], kr.write)
	if _, err := rand.Read(out[5:headerSize]); err != nil {
		return nil, fmt.Errorf("encryption: nonce: %w", err)
	}
	return kr.aeads[kr.write].Seal(out, out[5:headerSize], plaintext, additional(out[:5], key)), nil
}

// Open decrypts a value Seal wrote for the caller's key. It returns a
// *DecryptError, and no plaintext, for anything else.
func (kr *Keyring) Open(key string, data []byte) ([]byte, error) {
	if len(data) < Overhead || data[0] != format {
		return nil, &DecryptError{Reason: "not an encrypted value"}
	}
	id := binary.BigEndian.Uint32(data[1:5])
	aead, ok := kr.aeads[id]
	if !ok {
		return nil, &DecryptError{KeyID: id, Reason: "unknown key id"}
	}
	plain, err := aead.Open(nil, data[5:headerSize], data[headerSize:], additional(data[:5], key))
	if err != nil {
		return nil, &DecryptError{KeyID: id, Reason: "authentication failed"}
	}
	return plain, nil
}

// additional is the data authenticated with a value: its format byte and
// key ID (so neither can be swapped) and the caller's key (so the value
// cannot be moved to another key).
func additional(header []byte, key string) []byte {
	ad := make([]byte, 0, len(header)+len(key))
	return append(append(ad, header...), key...)
}

// Wrap returns a codec that encodes with inner and encrypts the result
// with the ring's newest key, and that decrypts (with any key of the ring)
// and then decodes with inner. A value that does not decrypt is a
// *DecryptError (ErrDecrypt); inner never sees it.
//
// Compress before encrypting, never after: ciphertext does not compress.
// Mind that compressed sizes say something about content (CRIME): when
// part of a value comes from someone who can also watch sizes in the
// table, do not compress it.
func Wrap[T any](inner codec.Codec[T], kr *Keyring) codec.Codec[T] {
	return &encrypted[T]{inner: inner, kr: kr}
}

type encrypted[T any] struct {
	inner codec.Codec[T]
	kr    *Keyring
}

var errNoRing = errors.New("encryption: no keyring (Wrap was given nil)")

func (e *encrypted[T]) Encode(key string, v T) ([]byte, error) {
	if e.kr == nil {
		return nil, errNoRing
	}
	b, err := e.inner.Encode(key, v)
	if err != nil {
		return nil, err
	}
	return e.kr.Seal(key, b)
}

func (e *encrypted[T]) Decode(key string, data []byte) (T, error) {
	if e.kr == nil {
		var zero T
		return zero, errNoRing
	}
	b, err := e.kr.Open(key, data)
	if err != nil {
		var zero T
		return zero, err
	}
	return e.inner.Decode(key, b)
}
