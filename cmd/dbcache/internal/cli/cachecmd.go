package cli

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"runtime/debug"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/spf13/cobra"

	"github.com/dbcache/dbcache/dbcache"
)

// parseTTL reads a --ttl value with Django's meanings:
//
//   - "default": the cache's default timeout (300 s, dbcache's default);
//   - "never" (or "none", "forever"): never expires (Django's None);
//   - "0" or any duration <= 0: expires at once (Django's 0);
//   - a number of seconds ("300", "1.5") or a Go duration ("5m", "1h30m").
func parseTTL(s string) (dbcache.Timeout, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "", "default":
		return dbcache.DefaultTimeout, nil
	case "never", "none", "forever":
		return dbcache.Forever, nil
	}
	if secs, err := strconv.ParseFloat(s, 64); err == nil {
		if math.IsNaN(secs) || math.IsInf(secs, 0) || math.Abs(secs) > float64(math.MaxInt64/int64(time.Second)) {
			return dbcache.Timeout{}, usagef("--ttl %q is out of range", s)
		}
		return dbcache.ExpiresIn(time.Duration(secs * float64(time.Second))), nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return dbcache.Timeout{}, usagef(`--ttl %q: want "default", "never", a number of seconds or a duration such as 90s or 5m`, s)
	}
	return dbcache.ExpiresIn(d), nil
}

const ttlHelp = `expiry: "default" (300s), "never", seconds ("300", "0" = expire at once) or a duration ("5m")`

// readValue is the value argument, or stdin when there is none. Stdin is
// read whole and byte for byte, so binary values (NUL bytes, no trailing
// newline) are stored exactly. A terminal on stdin with no argument is a
// usage error rather than a silent wait for input.
func (a *app) readValue(args []string, i int) ([]byte, error) {
	if len(args) > i {
		return []byte(args[i]), nil
	}
	if a.cfg.StdinIsTerminal {
		return nil, usagef("no value: give it as an argument or pipe it on stdin")
	}
	v, err := readAll(a.stdin)
	if err != nil {
		return nil, fmt.Errorf("read the value from stdin: %w", err)
	}
	return v, nil
}

// readAll reads r to the end into one buffer of exactly the value's size,
// so a large value costs one copy of itself, not the up to two and a half
// that io.ReadAll's growing buffer holds at its peak: the driver makes two
// more copies while sending it (its parameter buffer and the wire message).
// A regular file's size is known in advance; a pipe is read in chunks that
// are copied once into the final buffer, and then handed back to the OS.
func readAll(r io.Reader) ([]byte, error) {
	if f, ok := r.(*os.File); ok {
		if fi, err := f.Stat(); err == nil && fi.Mode().IsRegular() {
			if pos, err := f.Seek(0, io.SeekCurrent); err == nil && fi.Size() >= pos {
				buf := make([]byte, fi.Size()-pos)
				n, err := io.ReadFull(f, buf)
				if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) {
					return nil, err
				}
				buf = buf[:n]
				// The file may have grown since the Stat.
				rest, err := readChunks(f)
				if err != nil {
					return nil, err
				}
				if len(rest) == 0 {
					return buf, nil
				}
				return append(buf, rest...), nil
			}
		}
	}
	return readChunks(r)
}

// readChunks reads r in chunks of growing size and joins them once.
func readChunks(r io.Reader) ([]byte, error) {
	var chunks [][]byte
	total := 0
	size := 64 << 10
	for {
		chunk := make([]byte, size)
		n, err := io.ReadFull(r, chunk)
		if n > 0 {
			chunks = append(chunks, chunk[:n])
			total += n
		}
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			break
		}
		if err != nil {
			return nil, err
		}
		size = min(size*2, 64<<20)
	}
	if len(chunks) == 1 {
		return chunks[0], nil
	}
	out := make([]byte, 0, total)
	for _, c := range chunks {
		out = append(out, c...)
	}
	if total >= 16<<20 {
		// The chunks are garbage now; return their memory before the
		// driver allocates its two copies of the value.
		chunks = nil
		debug.FreeOSMemory()
	}
	return out, nil
}

// expiresAtOnce reports whether t is a TTL of zero or less: Django's
// timeout 0, which stores nothing a get can see.
func expiresAtOnce(t dbcache.Timeout) bool {
	d, ok := t.Duration()
	return ok && d <= 0
}

type keyJSON struct {
	Key string `json:"key"`
}

func (a *app) getCommand() *cobra.Command {
	var cf cacheFlags
	cmd := &cobra.Command{
		Use:   "get KEY",
		Short: "Print the value stored under KEY",
		Long: `Print the value stored under KEY, byte for byte, with no newline added
(one is added on a terminal). A key with no live entry prints nothing on
stdout, a line on stderr, and exits 3.

With --json: {"key":…,"found":true,"value":…,"encoding":"utf8"|"base64",
"ttl_seconds":…,"never_expires":…}; binary values are base64. ttl_seconds
is the remaining lifetime by the database's clock, to the microsecond (null
when the entry never expires), as the ttl command reports it.`,
		Example: `  dbcache get greeting
  dbcache get --key-prefix myapp --key-version 2 user:42 > user42.bin
  if v=$(dbcache get flag 2>/dev/null); then echo "flag=$v"; fi`,
		Args: keyArgs(0),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			key, _, err := a.key(cmd, &cf, args, nil)
			if err != nil {
				return err
			}
			o, err := a.openStore(ctx, cmd, &cf, 1)
			if err != nil {
				return err
			}
			defer o.close()
			cache := o.store
			var (
				v   []byte
				ttl dbcache.Timeout
			)
			// --json shows the remaining lifetime too, read in the same
			// statement as the value.
			if a.g.json {
				v, ttl, err = o.ttl.GetWithTTL(ctx, key)
			} else {
				v, err = cache.Get(ctx, key)
			}
			type out struct {
				keyJSON
				Found bool `json:"found"`
			}
			if errors.Is(err, dbcache.ErrMiss) {
				return a.miss(key, out{keyJSON: keyJSON{key}})
			}
			if err != nil {
				return keyError(err, key)
			}
			if a.g.json {
				return a.writeValueJSON(key, v, ttl)
			}
			if _, err := a.out.Write(v); err != nil {
				return err
			}
			if a.cfg.OutIsTerminal && (len(v) == 0 || v[len(v)-1] != '\n') {
				_, err = io.WriteString(a.out, "\n")
			}
			return err
		},
	}
	cf.add(cmd.Flags())
	cf.addKeyFile(cmd.Flags())
	return cmd
}

// storeCommand is set or add: the same arguments, different semantics.
func (a *app) storeCommand(add bool) *cobra.Command {
	var cf cacheFlags
	var ttl string
	cmd := &cobra.Command{
		Use:   "set KEY [VALUE]",
		Short: "Store VALUE (or stdin) under KEY",
		Long: `Store VALUE under KEY, replacing any entry. Without VALUE the value is read
from stdin, byte for byte (binary safe: NUL bytes and trailing newlines are
kept).

--ttl takes Django's meanings: "default" is the cache's default timeout
(300s), "never" never expires, 0 (or less) expires at once (set then says
so, and stores nothing a get can see), otherwise seconds or a duration.`,
		Example: `  dbcache set greeting "hello, world"
  dbcache set session:42 token --ttl 30m
  dbcache set config --ttl never < config.json
  printf 'a\0b' | dbcache set binary
  dbcache set --key-file key.bin "value"`,
		Args: keyArgs(1),
	}
	if add {
		cmd.Use = "add KEY [VALUE]"
		cmd.Short = "Store VALUE under KEY only if KEY has no live entry"
		cmd.Long = `Store VALUE (or stdin) under KEY only if KEY has no live entry (an expired
entry is taken over). Exits 3 when the key exists and nothing was stored.
--ttl as for set.`
		cmd.Example = `  dbcache add lock:report "$HOSTNAME" --ttl 10m || echo "someone else holds it"`
	}
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		ctx := cmd.Context()
		timeout, err := parseTTL(ttl)
		if err != nil {
			return err
		}
		key, rest, err := a.key(cmd, &cf, args, func(rest []string) bool { return len(rest) == 0 })
		if err != nil {
			return err
		}
		value, err := a.readValue(rest, 0)
		if err != nil {
			return err
		}
		o, err := a.openStore(ctx, cmd, &cf, 1)
		if err != nil {
			return err
		}
		defer o.close()
		cache := o.store
		// A TTL of zero or less stores nothing a get can see (Django's
		// timeout 0): say so rather than "OK".
		atOnce := expiresAtOnce(timeout)
		type out struct {
			keyJSON
			Stored  bool   `json:"stored"`
			Expired bool   `json:"expired,omitempty"`
			TTL     string `json:"ttl"`
		}
		if !add {
			if err := cache.Set(ctx, key, value, timeout); err != nil {
				return keyError(err, key)
			}
			switch {
			case a.g.json:
				return a.writeJSON(out{keyJSON{key}, !atOnce, atOnce, timeout.String()})
			case atOnce:
				a.println("expired at once (--ttl %s is not positive): nothing stored that a get can see", ttl)
			default:
				a.println("OK")
			}
			return nil
		}
		free, err := cache.Add(ctx, key, value, timeout)
		if err != nil {
			return keyError(err, key)
		}
		switch {
		case a.g.json:
			err = a.writeJSON(out{keyJSON{key}, free && !atOnce, free && atOnce, timeout.String()})
		case free && atOnce:
			a.println("expired at once (--ttl %s is not positive): the key was free, but nothing stored that a get can see", ttl)
		case free:
			a.println("stored")
		default:
			a.println("not stored: key %q has a live entry", key)
		}
		if err == nil && !free {
			return errMissExit
		}
		return err
	}
	cf.add(cmd.Flags())
	cf.addKeyFile(cmd.Flags())
	cmd.Flags().StringVar(&ttl, "ttl", "default", ttlHelp)
	return cmd
}

func (a *app) setCommand() *cobra.Command { return a.storeCommand(false) }
func (a *app) addCommand() *cobra.Command { return a.storeCommand(true) }

// boolCommand is a key command whose answer is yes or no (touch, delete,
// has): "no" prints its word and exits 3.
func (a *app) boolCommand(use, short, long, example, field, yes, no string, withTTL bool,
	run func(cmd *cobra.Command, cache dbcache.Store, key string, timeout dbcache.Timeout) (bool, error),
) *cobra.Command {
	var cf cacheFlags
	var ttl string
	cmd := &cobra.Command{
		Use:     use,
		Short:   short,
		Long:    long,
		Example: example,
		Args:    keyArgs(0),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			timeout, err := parseTTL(ttl)
			if err != nil {
				return err
			}
			key, _, err := a.key(cmd, &cf, args, nil)
			if err != nil {
				return err
			}
			o, err := a.openStore(ctx, cmd, &cf, 1)
			if err != nil {
				return err
			}
			defer o.close()
			cache := o.store
			ok, err := run(cmd, cache, key, timeout)
			if err != nil {
				return keyError(err, key)
			}
			// touch with a TTL of zero or less expires the entry.
			expired := withTTL && ok && expiresAtOnce(timeout)
			switch {
			case a.g.json:
				// Built by hand so "key" comes first, as in every other
				// command's JSON.
				k, _ := json.Marshal(key)
				extra := ""
				if expired {
					extra = `,"expired":true`
				}
				_, err = fmt.Fprintf(a.out, "{\"key\":%s,%q:%t%s}\n", k, field, ok, extra)
			case expired:
				a.println("expired (--ttl %s is not positive)", ttl)
			case ok:
				a.println("%s", yes)
			default:
				a.println("%s", no)
			}
			if err == nil && !ok {
				return errMissExit
			}
			return err
		},
	}
	cf.add(cmd.Flags())
	cf.addKeyFile(cmd.Flags())
	if withTTL {
		cmd.Flags().StringVar(&ttl, "ttl", "default", ttlHelp)
	}
	return cmd
}

func (a *app) touchCommand() *cobra.Command {
	return a.boolCommand("touch KEY", "Give KEY's live entry a new expiry",
		`Give KEY's live entry a new expiry (--ttl, as for set; 0 or less expires
it at once). Exits 3 when KEY has no live entry: touch never brings an
expired value back.`,
		`  dbcache touch session:42 --ttl 30m`,
		"touched", "touched", "not found", true,
		func(cmd *cobra.Command, c dbcache.Store, key string, t dbcache.Timeout) (bool, error) {
			return c.Touch(cmd.Context(), key, t)
		})
}

func (a *app) deleteCommand() *cobra.Command {
	return a.boolCommand("delete KEY", "Remove KEY",
		`Remove KEY. Exits 3 when KEY had no live entry (an expired entry is removed
too, but counts as absent).`,
		`  dbcache delete session:42`,
		"deleted", "deleted", "not found", false,
		func(cmd *cobra.Command, c dbcache.Store, key string, _ dbcache.Timeout) (bool, error) {
			return c.Delete(cmd.Context(), key)
		})
}

func (a *app) hasCommand() *cobra.Command {
	return a.boolCommand("has KEY", "Tell whether KEY has a live entry",
		`Print true and exit 0 when KEY has a live entry; print false and exit 3
otherwise.`,
		`  dbcache has feature:beta && echo on`,
		"exists", "true", "false", false,
		func(cmd *cobra.Command, c dbcache.Store, key string, _ dbcache.Timeout) (bool, error) {
			return c.HasKey(cmd.Context(), key)
		})
}

func (a *app) incrCommand(up bool) *cobra.Command {
	var cf cacheFlags
	name, verb := "incr", "Add DELTA (default 1) to"
	if !up {
		name, verb = "decr", "Subtract DELTA (default 1) from"
	}
	cmd := &cobra.Command{
		Use:   name + " KEY [DELTA]",
		Short: verb + " the integer stored under KEY",
		Long: verb + ` the integer stored under KEY and print the result.
The value must be a decimal integer (as Redis INCR reads it); the entry keeps
its expiry. DELTA may be negative (dbcache ` + name + ` KEY -5) and must fit a
64-bit integer. Exits 3 when KEY has no live entry, 1 when the value is not
an integer or the result would overflow int64.`,
		Example: "  dbcache " + name + " visits\n  dbcache " + name + " visits 10\n  dbcache " + name + " visits -5",
		Args:    keyArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			key, rest, err := a.key(cmd, &cf, args, nil)
			if err != nil {
				return err
			}
			delta := int64(1)
			if len(rest) == 1 {
				d, err := strconv.ParseInt(rest[0], 10, 64)
				switch {
				case errors.Is(err, strconv.ErrRange):
					return usagef("DELTA %q is out of range: it must fit a 64-bit integer (%d to %d)", rest[0], int64(math.MinInt64), int64(math.MaxInt64))
				case err != nil:
					return usagef("DELTA %q is not an integer", rest[0])
				}
				delta = d
			}
			o, err := a.openStore(ctx, cmd, &cf, 1)
			if err != nil {
				return err
			}
			defer o.close()
			cache := o.store
			var n int64
			if up {
				n, err = cache.Incr(ctx, key, delta)
			} else {
				n, err = cache.Decr(ctx, key, delta)
			}
			type out struct {
				keyJSON
				Found bool   `json:"found"`
				Value *int64 `json:"value,omitempty"`
			}
			switch {
			case errors.Is(err, dbcache.ErrMiss):
				return a.miss(key, out{keyJSON: keyJSON{key}})
			case errors.Is(err, dbcache.ErrNotInteger):
				return withCause(fmt.Sprintf("%s %q: the value is not an integer", name, key), dbcache.ErrNotInteger)
			case errors.Is(err, dbcache.ErrOverflow):
				return withCause(fmt.Sprintf("%s %q: the result would overflow a 64-bit integer", name, key), dbcache.ErrOverflow)
			case err != nil:
				return keyError(err, key)
			}
			if a.g.json {
				return a.writeJSON(out{keyJSON{key}, true, &n})
			}
			a.println("%d", n)
			return nil
		},
	}
	cf.add(cmd.Flags())
	cf.addKeyFile(cmd.Flags())
	return cmd
}

func (a *app) clearCommand() *cobra.Command {
	var yes bool
	cmd := &cobra.Command{
		Use:   "clear",
		Short: "Remove every entry in the cache table",
		Long: `Remove every entry in the cache table: every prefix and version, and every
cache that shares the table, as Django's cache.clear() does. On a terminal
it says how many entries that is and asks for confirmation; otherwise it
needs --yes (without it: exit 2).`,
		Example: `  dbcache clear
  dbcache clear --yes --schema staging_cache`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			if !yes && !a.cfg.StdinIsTerminal {
				return confirmationRequired("clear removes every entry: pass --yes to confirm (there is no terminal to ask on)")
			}
			o, err := a.openStore(ctx, cmd, &cacheFlags{}, 1)
			if err != nil {
				return err
			}
			defer o.close()
			cache := o.store
			if !yes {
				n, err := a.countAll(ctx, o)
				if err != nil {
					return err
				}
				if err := a.confirm(fmt.Sprintf("Remove all %s (%s live, %s expired) in %s, every prefix and version?",
					countOf(n.total, "entry", "entries"), humanCount(n.live), humanCount(n.total-n.live), n.table)); err != nil {
					return err
				}
			}
			if err := cache.Clear(ctx); err != nil {
				if a.sharded() {
					return a.partlyCleared(err)
				}
				return err
			}
			if a.g.json {
				return a.writeJSON(map[string]bool{"cleared": true})
			}
			a.println("cleared")
			return nil
		},
	}
	cmd.Flags().BoolVarP(&yes, "yes", "y", false, "do not ask for confirmation")
	return cmd
}

// partlyCleared reports a clear of several servers that failed on some of
// them: which servers were cleared (each server's clear is its own), then
// the error, naming the others.
func (a *app) partlyCleared(err error) error {
	failed := map[string]bool{}
	var walk func(error)
	walk = func(e error) {
		if j, ok := e.(interface{ Unwrap() []error }); ok {
			for _, x := range j.Unwrap() {
				walk(x)
			}
			return
		}
		if name := shardOf(e); name != "" {
			failed[name] = true
		}
	}
	walk(err)
	if len(failed) == 0 {
		return err // not a server's failure: nothing to tell apart
	}
	var cleared, notCleared []string
	for _, sh := range a.shards {
		if failed[sh.name] {
			notCleared = append(notCleared, sh.name)
		} else {
			cleared = append(cleared, sh.name)
		}
	}
	if a.g.json {
		if werr := a.writeJSON(struct {
			Cleared       bool     `json:"cleared"`
			ClearedShards []string `json:"cleared_shards"`
			FailedShards  []string `json:"failed_shards"`
		}{false, append([]string{}, cleared...), notCleared}); werr != nil {
			return werr
		}
		return err
	}
	if len(cleared) > 0 {
		a.println("cleared %d of %d servers (%s); not %s", len(cleared), len(a.shards), strings.Join(cleared, ", "), strings.Join(notCleared, ", "))
	}
	return err
}

// entryCount is what a confirmation prompt says is at stake.
type entryCount struct {
	table       string // schema-qualified, as people write it
	total, live int64
}

// countEntries counts the cache table's entries (an exact count, as stats
// does). The error wraps dbcache.ErrNotMigrated when there is no table.
func countEntries(ctx context.Context, pool *pgxpool.Pool, schema string) (*entryCount, error) {
	ident := pgx.Identifier{dbcache.TableName}
	if schema != "" {
		ident = pgx.Identifier{schema, dbcache.TableName}
	}
	var nsp string
	err := pool.QueryRow(ctx, `SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.oid = to_regclass($1)`, ident.Sanitize()).Scan(&nsp)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("count entries: %w", dbcache.ErrNotMigrated)
	}
	if err != nil {
		return nil, fmt.Errorf("count entries: %w", err)
	}
	n := &entryCount{table: nsp + "." + dbcache.TableName}
	err = pool.QueryRow(ctx, `SELECT count(*), count(*) FILTER (WHERE expires IS NULL OR expires > statement_timestamp()) FROM `+
		pgx.Identifier{nsp, dbcache.TableName}.Sanitize()).Scan(&n.total, &n.live)
	if err != nil {
		return nil, fmt.Errorf("count entries: %w", err)
	}
	return n, nil
}

// confirmationRequired is the usage error of a destructive command run
// without --yes and without a terminal to ask on.
func confirmationRequired(msg string) error {
	return &usageError{err: errors.New(msg), code: CodeConfirmationRequired}
}

// confirm asks question on stderr and reads the answer from stdin (a
// terminal: the caller checked). Anything but y or yes is a refusal.
func (a *app) confirm(question string) error {
	fmt.Fprintf(a.errw, "%s [y/N] ", question)
	line, _ := bufio.NewReader(a.stdin).ReadString('\n')
	if ans := strings.ToLower(strings.TrimSpace(line)); ans != "y" && ans != "yes" {
		return &codedError{code: CodeNotConfirmed, err: errors.New("not confirmed; nothing changed")}
	}
	return nil
}
