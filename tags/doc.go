// Package tags adds tags to a dbcache store: an entry is written with
// tags, and invalidating a tag makes every entry carrying it a miss in one
// call, as Laravel's cache tags and Symfony's TagAwareAdapter do.
//
//	tc, err := tags.New(cache, nil) // any dbcache.Store that is a dbcache.TTLReader
//	err = tc.Set(ctx, "page:/profile/42", html, dbcache.ExpiresIn(time.Hour), "user:42", "team:7")
//	v, err := tc.Get(ctx, "page:/profile/42") // dbcache.ErrMiss once a tag is invalidated
//	err = tc.Invalidate(ctx, "user:42")
//
// # Design: versions checked on read
//
// As Symfony's TagAwareAdapter does, each tag has a version, and each
// entry stores, in a header before its value, the version each of its
// tags had when it was written. A tag's version is an entry of the same
// store (under Config.Prefix, 8 random bytes, never expiring), so
// Invalidate deletes the tags' versions in one write of the store (one
// statement on a *dbcache.Cache) whatever the number of entries carrying
// them, and a read checks an entry's versions against the current ones:
// an entry whose tag has another version, or none, is a miss. A Cache
// remembers the tags of the keys it last wrote or read (up to 10,000
// keys), and reads such a key with its versions in one GetMany (one
// statement); another key costs a second read when its entry has tags. A
// write reads its tags' versions (making a missing one, first stored
// wins) before it writes the entry, so a write that races an
// invalidation of one of its tags stores an entry that is already a
// miss. A read that misses has seen the entry, or its absence, and every
// version it carries in one statement (of Config.Origin, when set): an
// entry read before its versions could have been replaced in between by
// one without a tag that was then invalidated, and never been absent, so
// a mismatch found in two reads is read again in one (up to three times,
// while the entry keeps being rewritten with other tags; then it is a
// miss). docs/tags.md has the measurements against the other design (a
// table of tag rows, an index, and a delete of the entries), and why this
// one.
//
// Because versions are entries, everything that holds for entries holds
// for them: a near cache (package nearcache) keeps its copies of them
// coherent as it does any entry's, and a culler (package culling) counts
// them, and the headers in the entries' values, under MaxEntries and
// MaxBytes. Once Invalidate has returned, no read begun afterwards, in
// any process, returns an entry written before it that carries one of its
// tags. Through a near cache that holds within its staleness bound: the
// read of the versions begins after the read itself began, so when that
// is more than MaxStaleness after Invalidate returned it sees the version
// deleted, or one made after, and neither matches an entry written
// before (versions are random, 64 bits). The near cache serves each key
// within the bound on its own, so a read through it can also get an entry
// newer than its copy of a tag's version: that is a miss, unless
// Config.Origin names the store the near cache fronts, which then
// confirms every mismatch. Reads through a near cache are not monotonic:
// a read confirmed from Origin can be newer than a copy a later read is
// served. A write through a near cache without Config.Origin reads the
// versions through it too, so one within MaxStaleness of another
// process's Invalidate can store an entry that is already a miss; with
// Origin it reads them from Origin. A culler that removes a tag's version
// (versions never expire, so they are culled with the never-expiring
// entries, after those whose keys sort before "~") makes the entries
// carrying it misses, never errors or other values. An invalidated
// entry's row stays in the table, counted, until it expires, is
// overwritten or is culled.
//
// # Limits and errors
//
// An entry carries at most MaxTags distinct tags (duplicates count
// once), each 1 to MaxTagBytes bytes of UTF-8 with no space or control
// character: otherwise the write is ErrTooManyTags or ErrInvalidTag and
// writes nothing. Keys that start with Config.Prefix are refused
// (dbcache.ErrInvalidKey): that key space is the versions'. A stored value
// that is not a tagged entry (written around the package) or whose header
// is damaged is ErrCorrupt, never a value: the header carries a CRC-32C
// over everything that says where the value begins. Reads are through the
// package (Get, GetWithTTL, GetMany): the store's own Get returns the
// header with the value.
//
// Every operation is a few operations of the store (a read at most two,
// four with Config.Origin; a write two, and one more for each tag whose
// version is missing or damaged), each
// bounded as the store bounds it (a *dbcache.Cache by the context's
// deadline or its Config.OpTimeout), so none hangs on a server that stops
// answering.
//
// Package gocachestore puts this package behind eko/gocache's store
// interface, its WithTags and WithInvalidateTags options included.
package tags
