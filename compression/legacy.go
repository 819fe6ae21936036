package compression

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/klauspost/compress/s2"
	"github.com/klauspost/compress/zstd"
)

// Format 0 is what this package wrote before format 1: one header byte (0
// stored, 1 S2 block, 2 zstd frame) and the body, with no magic and no
// checksum of its own. It is read only with Config.ReadOneByteFrames.

// legacyWindowMax is the largest zstd window a format 0 frame can need:
// they were written by EncodeAll at zstd's default level, whose window is
// 8 MiB (a value under it is one segment, its window its own size).
const legacyWindowMax = 8 << 20

// decompressLegacy decodes a format 0 value.
func (c *Compressor) decompressLegacy(data []byte) ([]byte, error) {
	body := data[1:]
	switch data[0] {
	case stored:
		if len(body) > c.maxSize {
			return nil, errTooLarge
		}
		return body, nil
	case byte(S2):
		// The block's own claim is not trusted: its tags are walked
		// first, so what is allocated is what the block really decodes
		// to.
		n, err := s2BlockLen(body, c.maxSize)
		if err != nil {
			return nil, fmt.Errorf("format 0 s2: %w", err)
		}
		out, err := s2.Decode(make([]byte, n), body)
		if err != nil {
			return nil, fmt.Errorf("format 0 s2: %w", err)
		}
		return out, nil
	case byte(Zstd):
		if len(body) == 0 {
			return nil, errors.New("format 0 zstd: no frame")
		}
		return c.legacyZstd(body)
	}
	return nil, errNotFrame
}

// legacyZstd decodes a format 0 zstd frame as a stream: the output grows
// with what is decoded, so a frame that claims a large size and holds
// little allocates little. Its window (at most legacyWindowMax, as the
// frame declares it) is the one allocation sized by the frame.
func (c *Compressor) legacyZstd(body []byte) ([]byte, error) {
	d, err := c.legacyDecoder()
	if err != nil {
		return nil, fmt.Errorf("format 0 zstd: %w", err)
	}
	defer c.zstreams.Put(d)
	if err := d.Reset(bytes.NewReader(body)); err != nil {
		return nil, fmt.Errorf("format 0 zstd: %w", err)
	}
	defer func() { _ = d.Reset(nil) }() // drop the reference to body
	// The output grows as the stream decodes, as format 1's does (see
	// grow), up to one byte past the limit, which is the error.
	out := make([]byte, 0, min(64<<10, c.maxSize+1))
	for {
		if len(out) == cap(out) {
			if len(out) > c.maxSize {
				return nil, errTooLarge
			}
			out = grow(out, 1, c.maxSize+1)
		}
		n, err := d.Read(out[len(out):cap(out)])
		out = out[:len(out)+n]
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("format 0 zstd: %w", err)
		}
	}
	if len(out) > c.maxSize {
		return nil, errTooLarge
	}
	return out, nil
}

func (c *Compressor) legacyDecoder() (*zstd.Decoder, error) {
	if d, ok := c.zstreams.Get().(*zstd.Decoder); ok {
		return d, nil
	}
	// One at a time and in this goroutine (concurrency 1: no goroutines
	// of its own, so a pooled decoder dropped by the pool leaks nothing).
	return zstd.NewReader(nil,
		zstd.WithDecoderConcurrency(1),
		zstd.WithDecoderLowmem(true),
		zstd.WithDecoderMaxWindow(min(legacyWindowMax, uint64(max(c.maxSize, zstd.MinWindowSize)))),
		zstd.WithDecoderMaxMemory(uint64(max(c.maxSize, 1))))
}

var errS2Corrupt = errors.New("corrupt block")

// s2BlockLen returns the length an S2 block decodes to, found by walking
// its tags as s2's decoder does (literals and copies, each within what is
// decoded so far), without writing anything. It fails when the block's
// claimed length is over limit or is not what its tags add up to.
func s2BlockLen(src []byte, limit int) (int, error) {
	claim, hdr := binary.Uvarint(src)
	if hdr <= 0 || hdr > 5 || claim > 0xffffffff {
		return 0, errS2Corrupt
	}
	if claim > uint64(limit) {
		return 0, errTooLarge
	}
	want := int(claim)
	src = src[hdr:]
	d, s, offset := 0, 0, 0
	for s < len(src) {
		var length int
		switch src[s] & 0x03 {
		case 0: // literal
			x := int(src[s] >> 2)
			switch {
			case x < 60:
				s++
			case x <= 63:
				extra := x - 59 // 1 to 4 bytes of length
				if len(src)-s < 1+extra {
					return 0, errS2Corrupt
				}
				x = 0
				for i := extra; i >= 1; i-- {
					x = x<<8 | int(src[s+i])
				}
				s += 1 + extra
			}
			length = x + 1
			if length > want-d || length > len(src)-s {
				return 0, errS2Corrupt
			}
			d += length
			s += length
			continue
		case 1: // copy with a 1-byte offset, or a repeat of the last offset
			if len(src)-s < 2 {
				return 0, errS2Corrupt
			}
			length = int(src[s]) >> 2 & 0x7
			toffset := int(uint32(src[s])&0xe0<<3 | uint32(src[s+1]))
			s += 2
			if toffset == 0 {
				switch length {
				case 5:
					if len(src)-s < 1 {
						return 0, errS2Corrupt
					}
					length = int(src[s]) + 4
					s++
				case 6:
					if len(src)-s < 2 {
						return 0, errS2Corrupt
					}
					length = int(uint32(src[s])|uint32(src[s+1])<<8) + 1<<8
					s += 2
				case 7:
					if len(src)-s < 3 {
						return 0, errS2Corrupt
					}
					length = int(uint32(src[s])|uint32(src[s+1])<<8|uint32(src[s+2])<<16) + 1<<16
					s += 3
				}
			} else {
				offset = toffset
			}
			length += 4
		case 2: // copy with a 2-byte offset
			if len(src)-s < 3 {
				return 0, errS2Corrupt
			}
			length = 1 + int(src[s])>>2
			offset = int(uint32(src[s+1]) | uint32(src[s+2])<<8)
			s += 3
		case 3: // copy with a 4-byte offset
			if len(src)-s < 5 {
				return 0, errS2Corrupt
			}
			length = 1 + int(src[s])>>2
			offset = int(uint32(src[s+1]) | uint32(src[s+2])<<8 | uint32(src[s+3])<<16 | uint32(src[s+4])<<24)
			s += 5
		}
		if offset <= 0 || d < offset || length > want-d {
			return 0, errS2Corrupt
		}
		d += length
	}
	if d != want {
		return 0, errS2Corrupt
	}
	return want, nil
}
