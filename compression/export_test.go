package compression

// SetChunkSize makes c write chunks of n bytes, so that tests can damage
// values of many chunks without megabytes of them.
func SetChunkSize(c *Compressor, n int) { c.chunk = n }

// ChunkSize is the most one chunk decodes to.
const ChunkSize = chunkSize

// S2BlockLen is s2BlockLen, for its fuzz test against s2's decoder.
var S2BlockLen = s2BlockLen
