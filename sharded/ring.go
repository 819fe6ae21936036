package sharded

// The ring: rendezvous hashing (highest random weight) over the shards'
// names. A key's shard is the one whose name, mixed with the key's hash,
// scores highest. Why rendezvous rather than Maglev (Solid Cache's choice)
// or a ring of virtual nodes, with the figures measured on 1M keys, is in
// docs/scale-out.md; in short:
//
//   - adding a server moves exactly the keys the new server wins (1/(N+1)
//     of them) and nothing else; removing one moves exactly its own keys
//     (1/N) and nothing else: the minimum any scheme can move. Maglev moves
//     a few percent more, between servers that stayed;
//   - balance is that of the hash itself (each server within 0.6 % of the
//     mean at 1M keys for 2 to 10 servers), with no table to size;
//   - the placement depends only on the set of names, never on the order
//     the servers are listed in or on a table built from them, so an
//     application and the CLI given the same names in any order agree;
//   - a lookup costs the key's hash and one mix per server: about 0.1 µs
//     at three servers, nothing measurable beside a round trip to
//     PostgreSQL (tens of µs).
//     Beyond a few dozen servers a table-based scheme would be cheaper per
//     lookup; a cache sharded over that many PostgreSQL servers is not what
//     this package is for.

// FNV-1a, 64 bits: the hash of a key's bytes. It is run over the bytes of
// the stored key's stem and then the caller's key (see Cache.shardFor)
// without joining them, and finished with fmix64, which gives every output
// bit an even chance whatever FNV's weak low bits were.
const (
	fnvOffset = 14695981039346656037
	fnvPrime  = 1099511628211
)

func fnvString(h uint64, s string) uint64 {
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= fnvPrime
	}
	return h
}

// fmix64 is MurmurHash3's finaliser: a bijection of 64-bit words in which
// each input bit flips each output bit with probability close to 1/2.
func fmix64(k uint64) uint64 {
	k ^= k >> 33
	k *= 0xff51afd7ed558ccd
	k ^= k >> 33
	k *= 0xc4ceb9fe1a85ec53
	k ^= k >> 33
	return k
}

// keyHash is the hash the ring places a routing key by.
func keyHash(s string) uint64 { return fmix64(fnvString(fnvOffset, s)) }

// nameSeed is a shard's seed: its name's hash. Salted so that a shard
// named like a key does not share its hash.
func nameSeed(name string) uint64 {
	return fmix64(fnvString(fnvString(fnvOffset, "dbcache-shard\x00"), name))
}

// ring places hashed keys on shards by rendezvous hashing.
type ring struct {
	seeds []uint64 // per shard, in the shards' order
	names []string // for ties, which need an order independent of the listing
}

func newRing(names []string) *ring {
	r := &ring{seeds: make([]uint64, len(names)), names: names}
	for i, n := range names {
		r.seeds[i] = nameSeed(n)
	}
	return r
}

// pick returns the index of the shard for a key of hash h: the highest
// score, ties (astronomically rare) to the smaller name.
func (r *ring) pick(h uint64) int {
	best, bestScore := 0, fmix64(h^r.seeds[0])
	for i := 1; i < len(r.seeds); i++ {
		s := fmix64(h ^ r.seeds[i])
		if s > bestScore || (s == bestScore && r.names[i] < r.names[best]) {
			best, bestScore = i, s
		}
	}
	return best
}
