package compression_test

import (
	"context"
	"fmt"
	"hash/crc32"
	"strconv"
	"testing"

	"github.com/klauspost/compress/s2"
	"github.com/klauspost/compress/zstd"

	"github.com/dbcache/dbcache/compression"
	"github.com/dbcache/dbcache/internal/benchpair"
)

type benchValue struct {
	name string
	v    []byte
}

// benchValues are the values the client-side benchmarks measure: JSON of
// 1, 10 and 100 KB, and 10 KB that is already compressed.
func benchValues() []benchValue {
	return []benchValue{
		{"json-1k", jsonValue(1<<10, 1)},
		{"json-10k", jsonValue(10<<10, 1)},
		{"json-100k", jsonValue(100<<10, 1)},
		{"compressed-10k", randomValue(10<<10, 1)},
	}
}

// BenchmarkCompress measures the client side alone, without a database:
// the CPU a value's compression and decompression cost, and the ratio
// (ratio = value bytes ÷ stored bytes, header included).
//
//	go test -run '^$' -bench Compress ./compression/
func BenchmarkCompress(b *testing.B) {
	kinds := benchValues()
	for _, k := range kinds {
		for _, alg := range []compression.Algorithm{compression.S2, compression.Zstd} {
			c, err := compression.New(&compression.Config{Algorithm: alg})
			if err != nil {
				b.Fatal(err)
			}
			packed := c.Compress(k.v)
			b.Run(k.name+"/"+alg.String()+"/compress", func(b *testing.B) {
				b.SetBytes(int64(len(k.v)))
				b.ReportAllocs()
				for b.Loop() {
					c.Compress(k.v)
				}
				b.ReportMetric(float64(len(k.v))/float64(len(packed)), "ratio")
			})
			b.Run(k.name+"/"+alg.String()+"/decompress", func(b *testing.B) {
				b.SetBytes(int64(len(k.v)))
				b.ReportAllocs()
				for b.Loop() {
					if _, err := c.Decompress(packed); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

// BenchmarkChecksum is the integrity check alone: the CRC-32C every frame
// carries, computed once per Compress and once per Decompress.
func BenchmarkChecksum(b *testing.B) {
	table := crc32.MakeTable(crc32.Castagnoli)
	for _, size := range []int{1 << 10, 10 << 10, 100 << 10} {
		v := jsonValue(size, 1)
		b.Run(strconv.Itoa(size>>10)+"k", func(b *testing.B) {
			b.SetBytes(int64(len(v)))
			for b.Loop() {
				crc32.Checksum(v, table)
			}
		})
	}
}

// BenchmarkChunkRatio reports what splitting values into chunks costs in
// stored bytes: the size of a value in this package's chunks against one
// zstd frame or S2 block for the whole value (extra-% is the difference).
func BenchmarkChunkRatio(b *testing.B) {
	whole, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedDefault), zstd.WithEncoderCRC(false))
	if err != nil {
		b.Fatal(err)
	}
	for _, size := range []int{300 << 10, 1 << 20, 4 << 20} {
		v := jsonValue(size, 7)
		for _, alg := range []compression.Algorithm{compression.Zstd, compression.S2} {
			c, err := compression.New(&compression.Config{Algorithm: alg})
			if err != nil {
				b.Fatal(err)
			}
			b.Run(fmt.Sprintf("%dk/%s", size>>10, alg), func(b *testing.B) {
				var n, w int
				for b.Loop() {
					n = len(c.Compress(v)) - compression.Overhead
				}
				if alg == compression.S2 {
					w = len(s2.Encode(nil, v))
				} else {
					w = len(whole.EncodeAll(v, nil))
				}
				b.ReportMetric(100*float64(n-w)/float64(w), "extra-%")
			})
		}
	}
}

// BenchmarkFrameCost is what format 1 (magic, version, CRC-32C, chunks)
// costs against the one-byte format 0 it replaced, per write and per read,
// in one run: the two alternate in blocks (internal/benchpair), so load
// from elsewhere lands on both alike. Format 0 is run as that code did it:
// s2.Encode or zstd's EncodeAll (with zstd's own checksum) behind one
// byte, s2.Decode or DecodeAll to read. ns/op is format 1,
// format0-ns/op format 0, x-format0 format 0's time over format 1's.
//
//	go test -run '^$' -bench FrameCost -benchtime 20000x ./compression/
func BenchmarkFrameCost(b *testing.B) {
	kinds := benchValues()
	zenc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedDefault))
	if err != nil {
		b.Fatal(err)
	}
	zdec, err := zstd.NewReader(nil, zstd.WithDecoderLowmem(true))
	if err != nil {
		b.Fatal(err)
	}
	old := func(alg compression.Algorithm, v []byte) []byte {
		out := []byte{byte(alg)}
		if alg == compression.S2 {
			out = append(out, s2.Encode(nil, v)...)
		} else {
			out = zenc.EncodeAll(v, out)
		}
		if len(out) >= 1+len(v) {
			return append([]byte{0}, v...)
		}
		return out
	}
	oldRead := func(data []byte) ([]byte, error) {
		switch data[0] {
		case 0:
			return data[1:], nil
		case byte(compression.S2):
			return s2.Decode(nil, data[1:])
		}
		return zdec.DecodeAll(data[1:], nil)
	}
	for _, k := range kinds {
		for _, alg := range []compression.Algorithm{compression.S2, compression.Zstd} {
			c, err := compression.New(&compression.Config{Algorithm: alg})
			if err != nil {
				b.Fatal(err)
			}
			packed, packed0 := c.Compress(k.v), old(alg, k.v)
			b.Run(k.name+"/"+alg.String()+"/write", func(b *testing.B) {
				benchpair.Run(b, 1,
					func(context.Context, int) error { c.Compress(k.v); return nil },
					func(context.Context, int) error { old(alg, k.v); return nil },
				).Report(b, "format0")
				b.ReportMetric(float64(len(packed)-len(packed0)), "extra-B")
			})
			b.Run(k.name+"/"+alg.String()+"/read", func(b *testing.B) {
				benchpair.Run(b, 1,
					func(context.Context, int) error { _, err := c.Decompress(packed); return err },
					func(context.Context, int) error { _, err := oldRead(packed0); return err },
				).Report(b, "format0")
			})
		}
	}
}
