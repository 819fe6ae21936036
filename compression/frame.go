package compression

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"slices"

	"github.com/klauspost/compress/s2"
	"github.com/klauspost/compress/zstd"
)

// The frame (format version 1):
//
//	magic     3 bytes  0xFF 'D' 'C'
//	version   1 byte   1
//	algorithm 1 byte   0 stored, 1 S2, 2 zstd
//	checksum  4 bytes  CRC-32C (Castagnoli) of the decoded value, little-endian
//	body               stored: the value itself
//	                   S2, zstd: chunks, each a uvarint length and that many
//	                   bytes: one S2 block or one zstd frame that decodes to
//	                   at most chunkSize bytes
//
// 0xFF never starts a UTF-8 text (so no JSON or string value), and it is
// not one of the one-byte headers of format 0, so a version 1 frame is
// never taken for a format 0 one.
const (
	magic0, magic1, magic2 = 0xFF, 'D', 'C'
	formatVersion          = 1
	headerSize             = 3 + 1 + 1 + 4

	// chunkSize bounds what one chunk decodes to, and so what a read
	// allocates beyond the bytes it actually decoded: a crafted chunk can
	// claim up to this much before it fails. 256 KiB keeps every value of
	// that size or less in one chunk (no loss of ratio) and costs zstd
	// about 1 % more bytes on larger JSON than one frame for the whole
	// value (docs/compression.md).
	chunkSize = 256 << 10
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

func checksum(b []byte) uint32 { return crc32.Checksum(b, castagnoli) }

// appendHeader appends a version 1 header for a value of algorithm alg
// (stored for none) whose decoded bytes have the checksum sum.
func appendHeader(dst []byte, alg byte, sum uint32) []byte {
	dst = append(dst, magic0, magic1, magic2, formatVersion, alg)
	return binary.LittleEndian.AppendUint32(dst, sum)
}

// isFrame reports whether data starts with the magic.
func isFrame(data []byte) bool {
	return len(data) >= 3 && data[0] == magic0 && data[1] == magic1 && data[2] == magic2
}

// compressChunks appends data's chunks, compressed with alg, to dst. Each
// chunk is compressed in place, after room for its length: chunkSize
// compresses to less than 2 MiB, whose uvarint is at most 3 bytes.
func (c *Compressor) compressChunks(dst []byte, alg Algorithm, data []byte) []byte {
	const room = 3
	for len(data) > 0 {
		n := min(len(data), c.chunk)
		start := len(dst)
		switch alg {
		case S2:
			need := room + s2.MaxEncodedLen(n)
			dst = slices.Grow(dst, need)
			enc := s2.Encode(dst[start+room:start+need], data[:n])
			dst = dst[:start+room+len(enc)]
		case Zstd:
			dst = c.zenc.EncodeAll(data[:n], append(dst, make([]byte, room)...))
		}
		var lb [binary.MaxVarintLen64]byte
		k := binary.PutUvarint(lb[:], uint64(len(dst)-start-room))
		copy(dst[start+k:], dst[start+room:])
		dst = dst[:len(dst)-(room-k)]
		copy(dst[start:], lb[:k])
		data = data[n:]
	}
	return dst
}

var errChunk = errors.New("chunk length runs past the end")

// decompressChunks decodes a version 1 body of S2 or zstd chunks. Memory
// follows what is decoded: the output grows as chunks decode, and no chunk
// may claim more than chunkSize, or more than what is left of
// MaxDecodedSize.
func (c *Compressor) decompressChunks(alg byte, body []byte) ([]byte, error) {
	var out []byte
	for len(body) > 0 {
		n, w := binary.Uvarint(body)
		if w <= 0 || n > uint64(len(body)-w) {
			return nil, errChunk
		}
		chunk := body[w : w+int(n)]
		body = body[w+int(n):]
		budget := min(chunkSize, c.maxSize-len(out))
		// (chunkSize, not c.chunk: a reader accepts the chunks of any
		// writer.)
		switch alg {
		case byte(S2):
			claim, err := s2.DecodedLen(chunk)
			if err != nil {
				return nil, fmt.Errorf("s2: %w", err)
			}
			if claim > budget {
				return nil, errTooLarge
			}
			out = grow(out, claim, c.maxSize)
			got, err := s2.Decode(out[len(out):len(out)+claim], chunk)
			if err != nil {
				return nil, fmt.Errorf("s2: %w", err)
			}
			out = out[:len(out)+len(got)]
		case byte(Zstd):
			var h zstd.Header
			if err := h.Decode(chunk); err != nil {
				return nil, fmt.Errorf("zstd: %w", err)
			}
			if !h.HasFCS || h.FrameContentSize > uint64(budget) {
				// Every chunk this package writes states its size.
				return nil, errTooLarge
			}
			fcs := int(h.FrameContentSize)
			out = grow(out, fcs, c.maxSize)
			// The decoder is limited to the capacity it is given
			// (WithDecodeAllCapLimit): exactly the chunk's stated size,
			// so no chunk decodes past it, whatever its frames hold.
			dst := out[: len(out) : len(out)+fcs]
			got, err := c.zdec.DecodeAll(chunk, dst)
			if err != nil {
				return nil, fmt.Errorf("zstd: %w", err)
			}
			if cap(got) != cap(dst) {
				return nil, errors.New("zstd: chunk outgrew its stated size")
			}
			out = out[:len(got)]
		}
	}
	return out, nil
}

// grow returns b with room for n more bytes: when it must grow, its
// capacity doubles (so the copying stays linear in the value's size), but
// never past limit unless len(b)+n is.
func grow(b []byte, n, limit int) []byte {
	if cap(b)-len(b) >= n {
		return b
	}
	nb := make([]byte, len(b), max(len(b)+n, min(2*cap(b), limit)))
	copy(nb, b)
	return nb
}
