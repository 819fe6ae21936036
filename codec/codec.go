// Package codec turns typed values into the bytes a dbcache entry stores,
// and back. It is what package github.com/dbcache/dbcache/typed is built on:
// JSON (the default), gob, and raw []byte and string are here; compression
// (package github.com/dbcache/dbcache/compression) and encryption (package
// github.com/dbcache/dbcache/encryption) wrap any Codec; a protobuf Codec
// is a few lines (see examples/protobuf).
//
// # The key
//
// Both methods get the caller's key (the key passed to typed.Cache, before
// dbcache adds its prefix and version), so a Codec can bind the bytes to
// it: encryption authenticates it, so a value copied under another key
// does not decrypt. It is the caller's key rather than the stored one on
// purpose: IncrVersion and DecrVersion move an entry to another version,
// and it must still decode there. Codecs that have no use for it ignore it.
//
// # Bad bytes
//
// Decode gets whatever the table holds: a value written by an older
// version of the program, by another program, or damaged. It must return an
// error for bytes it cannot decode, never panic and never return a value
// that was not encoded. typed.Cache also recovers a panic in Decode and
// reports it as a decode error, as a last line of defence.
package codec

import (
	"bytes"
	"encoding/gob"
	"encoding/json"
	"errors"
	"fmt"
)

// Codec encodes values of type T to bytes and decodes them back. Its
// methods must be safe for concurrent use.
type Codec[T any] interface {
	// Encode returns the bytes to store for v under the caller's key.
	Encode(key string, v T) ([]byte, error)
	// Decode returns the value that data, stored under key, encodes. It
	// returns an error, never a panic or a made-up value, for bytes it
	// cannot decode.
	Decode(key string, data []byte) (T, error)
}

// JSON returns the JSON codec (encoding/json) for T: the default of
// typed.Cache, readable by any language and by `dbcache get`. A stored value
// that is not valid JSON for T (a field whose type changed, trailing bytes)
// is an error; JSON's own rules apply otherwise (unknown fields are
// ignored, missing ones keep their zero value).
func JSON[T any]() Codec[T] { return jsonCodec[T]{} }

type jsonCodec[T any] struct{}

func (jsonCodec[T]) Encode(_ string, v T) ([]byte, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("codec: json: %w", err)
	}
	return b, nil
}

func (jsonCodec[T]) Decode(_ string, data []byte) (T, error) {
	var v T
	if err := json.Unmarshal(data, &v); err != nil {
		var zero T
		return zero, fmt.Errorf("codec: json: %w", err)
	}
	return v, nil
}

// Gob returns the gob codec (encoding/gob) for T, readable only by Go: for
// types JSON does not carry faithfully (maps with non-string keys, large
// integers in interface values). Each value is encoded on its own, with its
// type description, so entries never depend on one another; that makes it
// larger and slower than JSON for one value (docs/observability.md has the
// figures). gob cannot encode a nil pointer or a struct with no exported
// fields; those are Encode errors.
func Gob[T any]() Codec[T] { return gobCodec[T]{} }

type gobCodec[T any] struct{}

func (gobCodec[T]) Encode(_ string, v T) (_ []byte, err error) {
	// gob panics, rather than failing, on a nil pointer.
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("codec: gob: %v", r)
		}
	}()
	var buf bytes.Buffer
	if err := gob.NewEncoder(&buf).Encode(v); err != nil {
		return nil, fmt.Errorf("codec: gob: %w", err)
	}
	return buf.Bytes(), nil
}

// errTrailing is a gob value followed by bytes that are not part of it.
var errTrailing = errors.New("codec: gob: trailing bytes after the value")

func (gobCodec[T]) Decode(_ string, data []byte) (T, error) {
	var v, zero T
	// bytes.Reader is an io.ByteReader, so the decoder reads exactly the
	// value's messages and what is left over can be checked.
	r := bytes.NewReader(data)
	if err := gob.NewDecoder(r).Decode(&v); err != nil {
		return zero, fmt.Errorf("codec: gob: %w", err)
	}
	if r.Len() != 0 {
		return zero, errTrailing
	}
	return v, nil
}

// Bytes returns the identity codec for []byte values: what is stored is
// the value itself, as with dbcache's byte API. A stored empty value
// decodes to an empty, non-nil slice.
func Bytes() Codec[[]byte] { return bytesCodec{} }

type bytesCodec struct{}

func (bytesCodec) Encode(_ string, v []byte) ([]byte, error) { return v, nil }

func (bytesCodec) Decode(_ string, data []byte) ([]byte, error) {
	if data == nil {
		data = []byte{}
	}
	return data, nil
}

// String returns the codec for string values: the string's bytes, stored
// as they are (not checked to be UTF-8, as Go strings are not).
func String() Codec[string] { return stringCodec{} }

type stringCodec struct{}

func (stringCodec) Encode(_ string, v string) ([]byte, error) { return []byte(v), nil }

func (stringCodec) Decode(_ string, data []byte) (string, error) { return string(data), nil }
