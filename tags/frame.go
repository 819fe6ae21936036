package tags

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"unicode/utf8"
)

// A tagged entry's stored value is a frame: a header naming the entry's
// tags with the version each had when the entry was written, then the
// caller's value byte for byte.
//
//	0xDB 0x74      magic
//	0x01           format
//	uint32         n: the length of the tag section (big-endian)
//	uint32         CRC-32C of the format byte, n and the tag section
//	tag section    count (1 byte), then per tag: its length (1 byte),
//	               its bytes, its version (8 bytes)
//	value          the rest
//
// The checksum covers everything that says where the value begins, so a
// damaged header is ErrCorrupt, never a value that starts in the wrong
// place or a version that happens to match. The value itself is the
// caller's (a checksummed codec, package compression's, guards it).

const (
	magic0, magic1 = 0xDB, 0x74
	formatV1       = 0x01
	headerFixed    = 2 + 1 + 4 + 4
	versionBytes   = 8
	// maxSection is the longest tag section MaxTags tags of MaxTagBytes
	// make: a longer n is damage, refused before anything is read by it.
	maxSection = 1 + MaxTags*(1+MaxTagBytes+versionBytes)
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// tagVersion is one tag of an entry and the version it had.
type tagVersion struct {
	tag     string
	version []byte
}

// encode frames value with tvs.
func encode(tvs []tagVersion, value []byte) []byte {
	n := 1
	for _, tv := range tvs {
		n += 1 + len(tv.tag) + versionBytes
	}
	b := make([]byte, headerFixed, headerFixed+n+len(value))
	b[0], b[1], b[2] = magic0, magic1, formatV1
	binary.BigEndian.PutUint32(b[3:7], uint32(n))
	b = append(b, byte(len(tvs)))
	for _, tv := range tvs {
		b = append(b, byte(len(tv.tag)))
		b = append(b, tv.tag...)
		b = append(b, tv.version...)
	}
	binary.BigEndian.PutUint32(b[7:11], checksum(b))
	return append(b, value...)
}

// checksum is the CRC-32C of a frame's format byte, length and section.
func checksum(b []byte) uint32 {
	c := crc32.Update(0, castagnoli, b[2:7])
	return crc32.Update(c, castagnoli, b[headerFixed:])
}

// decode splits a stored value into its tags and the caller's value. A
// value that is not a frame, or a damaged one, is ErrCorrupt.
func decode(b []byte) ([]tagVersion, []byte, error) {
	if len(b) < headerFixed+1 || b[0] != magic0 || b[1] != magic1 {
		return nil, nil, fmt.Errorf("%w: not a tagged entry", ErrCorrupt)
	}
	if b[2] != formatV1 {
		return nil, nil, fmt.Errorf("%w: unknown format %d", ErrCorrupt, b[2])
	}
	n := binary.BigEndian.Uint32(b[3:7])
	if n < 1 || n > maxSection || int(n) > len(b)-headerFixed {
		return nil, nil, fmt.Errorf("%w: tag section of %d bytes in a value of %d", ErrCorrupt, n, len(b))
	}
	end := headerFixed + int(n)
	c := crc32.Update(0, castagnoli, b[2:7])
	if crc32.Update(c, castagnoli, b[headerFixed:end]) != binary.BigEndian.Uint32(b[7:11]) {
		return nil, nil, fmt.Errorf("%w: header checksum mismatch", ErrCorrupt)
	}
	sec := b[headerFixed:end]
	count := int(sec[0])
	if count > MaxTags {
		return nil, nil, fmt.Errorf("%w: %d tags", ErrCorrupt, count)
	}
	sec = sec[1:]
	tvs := make([]tagVersion, 0, count)
	for range count {
		if len(sec) < 1 {
			return nil, nil, fmt.Errorf("%w: tag section ends early", ErrCorrupt)
		}
		l := int(sec[0])
		if l == 0 || l > MaxTagBytes || len(sec) < 1+l+versionBytes {
			return nil, nil, fmt.Errorf("%w: tag of %d bytes", ErrCorrupt, l)
		}
		tag := sec[1 : 1+l]
		if !utf8.Valid(tag) {
			return nil, nil, fmt.Errorf("%w: tag is not UTF-8", ErrCorrupt)
		}
		tvs = append(tvs, tagVersion{tag: string(tag), version: sec[1+l : 1+l+versionBytes : 1+l+versionBytes]})
		sec = sec[1+l+versionBytes:]
	}
	if len(sec) != 0 {
		return nil, nil, fmt.Errorf("%w: %d bytes after the tags", ErrCorrupt, len(sec))
	}
	return tvs, b[end:], nil
}
