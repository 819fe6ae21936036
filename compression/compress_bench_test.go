package compression_test

import (
	"testing"

	"github.com/dbcache/dbcache/compression"
)

// BenchmarkCompress measures the client side alone, without a database:
// the CPU a value's compression and decompression cost, and the ratio
// (ratio = value bytes ÷ stored bytes, header included).
//
//	go test -run '^$' -bench Compress ./compression/
func BenchmarkCompress(b *testing.B) {
	kinds := []struct {
		name string
		v    []byte
	}{
		{"json-1k", jsonValue(1<<10, 1)},
		{"json-10k", jsonValue(10<<10, 1)},
		{"json-100k", jsonValue(100<<10, 1)},
		{"compressed-10k", randomValue(10<<10, 1)},
	}
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
