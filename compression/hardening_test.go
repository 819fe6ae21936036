package compression_test

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"runtime"
	"testing"

	"github.com/klauspost/compress/s2"
	"github.com/klauspost/compress/zstd"
	"github.com/stretchr/testify/require"

	"github.com/dbcache/dbcache/compression"
)

// zstdBomb is a zstd frame that declares fcs bytes (single segment, so its
// window is that size too) and holds one RLE block of n bytes: 17 bytes
// that claim anything.
func zstdBomb(fcs uint64, n int) []byte {
	b := []byte{0x28, 0xb5, 0x2f, 0xfd, 0xe0} // magic; 8-byte size, single segment, no checksum
	b = binary.LittleEndian.AppendUint64(b, fcs)
	hdr := uint32(n)<<3 | 1<<1 | 1 // last block, RLE, n bytes
	return append(b, byte(hdr), byte(hdr>>8), byte(hdr>>16), 'x')
}

// s2Bomb is an S2 block that claims n bytes and holds one literal byte.
func s2Bomb(n uint64) []byte {
	return append(binary.AppendUvarint(nil, n), 0x00, 'x')
}

// frame builds a format 1 frame around chunks (the checksum is of want).
func frame(alg byte, want []byte, chunks ...[]byte) []byte {
	b := []byte{0xFF, 'D', 'C', 1, alg}
	b = binary.LittleEndian.AppendUint32(b, crc32.Checksum(want, crc32.MakeTable(crc32.Castagnoli)))
	for _, c := range chunks {
		b = binary.AppendUvarint(b, uint64(len(c)))
		b = append(b, c...)
	}
	return b
}

type crafted struct {
	name string
	data []byte
}

// craftedFrames are decompression bombs: frames whose own sizes claim far
// more than they hold, in format 1 and in format 0 (one header byte).
func craftedFrames() []crafted {
	var out []crafted
	for _, claim := range []uint64{1 << 30, 64 << 20, 8 << 20, compression.ChunkSize} {
		out = append(out,
			crafted{fmt.Sprintf("format 0 zstd claiming %d", claim), append([]byte{2}, zstdBomb(claim, 128<<10)...)},
			crafted{fmt.Sprintf("format 0 s2 claiming %d", claim), append([]byte{1}, s2Bomb(claim)...)},
			crafted{fmt.Sprintf("format 1 zstd chunk claiming %d", claim), frame(2, nil, zstdBomb(claim, 128<<10))},
			crafted{fmt.Sprintf("format 1 s2 chunk claiming %d", claim), frame(1, nil, s2Bomb(claim))},
		)
	}
	// Many chunks, each claiming the most a chunk may.
	many := make([][]byte, 1000)
	for i := range many {
		many[i] = s2Bomb(compression.ChunkSize)
	}
	return append(out, crafted{"format 1 s2, 1000 chunks claiming 256 KiB each", frame(1, nil, many...)})
}

// allocated returns the bytes f allocates, averaged over runs. The
// process's allocation counter is global, which is why the tests that
// use it do not run in parallel with others.
func allocated(runs int, f func()) uint64 {
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for range runs {
		f()
	}
	runtime.ReadMemStats(&after)
	return (after.TotalAlloc - before.TotalAlloc) / uint64(runs)
}

// A crafted frame makes a read allocate what it really decodes (plus at
// most one chunk's claim), not what it claims: whatever MaxDecodedSize is,
// and with format 0 reading on too.
//
// Not parallel: allocated reads the process's allocation counter.
func TestDecompressBombs(t *testing.T) {
	// The zstd bomb is a well-formed frame: with a true size it decodes.
	ok, err := zstd.NewReader(nil)
	require.NoError(t, err)
	defer ok.Close()
	got, err := ok.DecodeAll(zstdBomb(128<<10, 128<<10), nil)
	require.NoError(t, err)
	require.Len(t, got, 128<<10)

	for _, limit := range []int{0, 1 << 30} {
		for _, legacy := range []bool{false, true} {
			c := newC(t, &compression.Config{MaxDecodedSize: limit, ReadOneByteFrames: legacy})
			// Warm the decoders up, so their own state is not counted.
			for _, alg := range []compression.Algorithm{compression.S2, compression.Zstd} {
				_, err := c.Decompress(newC(t, &compression.Config{Algorithm: alg, MinSize: -1}).Compress(jsonValue(4000, 1)))
				require.NoError(t, err)
			}
			_, _ = c.Decompress(append([]byte{2}, zstdBomb(1<<20, 128<<10)...))
			for _, bomb := range craftedFrames() {
				var err error
				n := allocated(5, func() { _, err = c.Decompress(bomb.data) })
				require.ErrorIs(t, err, compression.ErrCorrupt, bomb.name)
				bound := uint64(2 * compression.ChunkSize)
				if legacy && bomb.data[0] == 2 {
					// A format 0 zstd frame is a stream whose window (up
					// to 8 MiB, as the frame says) is allocated first.
					bound = 10 << 20
				}
				t.Logf("%s (MaxDecodedSize %d, format 0 %v): %d bytes per read", bomb.name, limit, legacy, n)
				require.LessOrEqual(t, n, bound, "%s (MaxDecodedSize %d, format 0 %v): %d bytes allocated per read", bomb.name, limit, legacy, n)
			}
		}
	}
}

// A frame that really decodes to a lot (zeros compress a thousandfold, so
// a few kilobytes do) makes a read allocate what it decodes: the read
// stops once it passes MaxDecodedSize, and holds at most twice the limit
// (plus a chunk) at its peak; a value at the limit decodes within the same
// bound. Format 0 values, with ReadOneByteFrames, likewise (plus, for
// zstd, the window the frame declares).
//
// Not parallel: allocated reads the process's allocation counter.
func TestDecompressRealBombs(t *testing.T) {
	const limit = 4 << 20
	bound := uint64(2*limit + 2*compression.ChunkSize)
	r := newC(t, &compression.Config{MaxDecodedSize: limit, ReadOneByteFrames: true})
	for _, alg := range []compression.Algorithm{compression.S2, compression.Zstd} {
		w := newC(t, &compression.Config{Algorithm: alg})
		for _, size := range []int{limit, 4 * limit} {
			zeros := make([]byte, size)
			for name, data := range map[string][]byte{"format 1": w.Compress(zeros), "format 0": format0(byte(alg), zeros)} {
				require.Less(t, len(data), size/100, "%s %s: a bomb", alg, name)
				var err error
				n := allocated(3, func() { _, err = r.Decompress(data) })
				if size > limit {
					require.ErrorIs(t, err, compression.ErrCorrupt, "%s %s of %d", alg, name, size)
				} else {
					require.NoError(t, err, "%s %s of %d", alg, name, size)
				}
				t.Logf("%s %s decoding to %d (limit %d): %d bytes per read", alg, name, size, limit, n)
				want := bound
				if name == "format 0" && alg == compression.Zstd {
					want += 10 << 20 // the stream's window, up to 8 MiB as the frame declares
				}
				require.LessOrEqual(t, n, want, "%s %s of %d: %d bytes per read", alg, name, size, n)
			}
		}
	}
}

// The default limit is at most 64 MiB, and a value over the limit is
// refused, for every algorithm.
func TestMaxDecodedSize(t *testing.T) {
	t.Parallel()
	require.LessOrEqual(t, compression.MaxDecodedSizeDefault, 64<<20)
	big := make([]byte, 1<<20)
	for _, alg := range []compression.Algorithm{compression.S2, compression.Zstd} {
		for _, minSize := range []int{-1, 2 << 20} { // compressed, stored
			packed := newC(t, &compression.Config{Algorithm: alg, MinSize: minSize}).Compress(big)
			_, err := newC(t, &compression.Config{MaxDecodedSize: 1<<20 - 1}).Decompress(packed)
			require.ErrorIs(t, err, compression.ErrCorrupt, "%s min %d", alg, minSize)
			got, err := newC(t, &compression.Config{MaxDecodedSize: 1 << 20}).Decompress(packed)
			require.NoError(t, err)
			require.Len(t, got, 1<<20)
		}
	}
}

// Every truncation and every single-bit flip of the sample values, for
// every algorithm (the stored frame too, and values of several chunks),
// is an error: none decodes to bytes that were never stored.
func TestDamageNeverDecodes(t *testing.T) {
	t.Parallel()
	type sample struct {
		name  string
		value []byte
		w     *compression.Compressor
	}
	chunked := func(alg compression.Algorithm) *compression.Compressor {
		c := newC(t, &compression.Config{Algorithm: alg})
		compression.SetChunkSize(c, 1024)
		return c
	}
	samples := []sample{
		{"zstd json", jsonValue(3000, 11), newC(t, &compression.Config{Algorithm: compression.Zstd})},
		{"s2 json", jsonValue(3000, 12), newC(t, &compression.Config{Algorithm: compression.S2})},
		{"zstd json, 5 chunks", jsonValue(5000, 13), chunked(compression.Zstd)},
		{"s2 json, 5 chunks", jsonValue(5000, 14), chunked(compression.S2)},
		{"stored small json", []byte(`{"id":42,"name":"carol","tags":["a","b"]}`), newC(t, nil)},
		{"stored random", randomValue(600, 15), newC(t, &compression.Config{MinSize: -1})},
		{"stored empty", []byte{}, newC(t, nil)},
	}
	r := newC(t, nil)
	for _, s := range samples {
		packed := s.w.Compress(s.value)
		got, err := r.Decompress(packed)
		require.NoError(t, err, s.name)
		require.Equal(t, s.value, got, s.name)
		var silent, tries int
		try := func(bad []byte) {
			tries++
			if out, err := r.Decompress(bad); err == nil && !bytes.Equal(out, s.value) {
				silent++
			}
		}
		for cut := range len(packed) {
			try(packed[:cut])
		}
		for i := range len(packed) * 8 {
			bad := bytes.Clone(packed)
			bad[i/8] ^= 1 << (i % 8)
			try(bad)
		}
		t.Logf("%s: %d of %d damaged frames (%d bytes) decoded to another value", s.name, silent, tries, len(packed))
		require.Zero(t, silent, "%s: %d of %d damaged frames (%d bytes) decoded to another value", s.name, silent, tries, len(packed))
	}
}

// format0 is what this package wrote before format 1: one header byte and
// the value (0), its S2 block (1) or its zstd frame (2).
func format0(alg byte, v []byte) []byte {
	switch alg {
	case 1:
		return append([]byte{1}, s2.Encode(nil, v)...)
	case 2:
		enc, err := zstd.NewWriter(nil)
		if err != nil {
			panic(err)
		}
		return append([]byte{2}, enc.EncodeAll(v, nil)...)
	}
	return append([]byte{0}, v...)
}

// A value with no frame (written before compression was on, or in format
// 0) is an error, even when its first byte is one of format 0's headers;
// the one-release option reads format 0, ambiguous as it is documented.
func TestFramelessValues(t *testing.T) {
	t.Parallel()
	c := newC(t, nil)
	j := jsonValue(2000, 16)
	for _, raw := range [][]byte{
		{0x00, 'a', 'b', 'c'}, // reads as "abc" in format 0
		{0x01, 0x03, 0x08, 'x', 'y', 'z'},
		format0(2, j),
		j, []byte("hello"), {}, {0xFF}, {0xFF, 'D'},
	} {
		_, err := c.Decompress(raw)
		require.ErrorIs(t, err, compression.ErrCorrupt, "%x", raw)
	}

	old := newC(t, &compression.Config{ReadOneByteFrames: true})
	for alg := range byte(3) {
		got, err := old.Decompress(format0(alg, j))
		require.NoError(t, err, alg)
		require.Equal(t, j, got)
	}
	// The ambiguity the option's doc states: a raw value that happens to
	// start with a format 0 header byte reads as another value.
	got, err := old.Decompress([]byte{0x00, 'a', 'b', 'c'})
	require.NoError(t, err)
	require.Equal(t, []byte("abc"), got)
	got, err = old.Decompress([]byte{0x01, 0x03, 0x08, 'x', 'y', 'z'})
	require.NoError(t, err)
	require.Equal(t, []byte("xyz"), got)
	// A format 0 zstd header with nothing after it is not an empty value.
	_, err = old.Decompress([]byte{2})
	require.ErrorIs(t, err, compression.ErrCorrupt)
	// Format 1 frames read the same with the option on.
	got, err = old.Decompress(c.Compress(j))
	require.NoError(t, err)
	require.Equal(t, j, got)
}

// s2BlockLen, which sizes format 0 S2 blocks before they are decoded,
// agrees with s2's decoder: a block it accepts decodes to the length it
// says, and a block it refuses does not decode (or is over the limit).
func FuzzS2BlockLen(f *testing.F) {
	for _, v := range [][]byte{jsonValue(2000, 1), make([]byte, 70000), randomValue(300, 2), {}, []byte("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaab")} {
		f.Add(s2.Encode(nil, v))
		f.Add(s2.EncodeBetter(nil, v))
	}
	f.Add(s2Bomb(1 << 30))
	f.Fuzz(func(t *testing.T, block []byte) {
		const limit = 1 << 20
		n, err := compression.S2BlockLen(block, limit)
		claim, cerr := s2.DecodedLen(block)
		if cerr != nil || claim > limit {
			require.Error(t, err)
			return
		}
		out, derr := s2.Decode(nil, block)
		if err != nil {
			require.Error(t, derr, "walk refused a block that decodes")
			return
		}
		require.NoError(t, derr, "walk accepted a block that does not decode")
		require.Equal(t, len(out), n)
	})
}
