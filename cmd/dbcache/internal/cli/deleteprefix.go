package cli

import (
	"context"
	"errors"
	"fmt"
	"strconv"

	"github.com/spf13/cobra"

	"github.com/dbcache/dbcache/dbcache"
)

// promptCountCap bounds how many keys the confirmation prompt of
// delete-prefix counts (through the same paged walk keys does), so asking
// costs a few queries even when the namespace holds millions.
const promptCountCap = 10_000

// deletePrefixJSON is delete-prefix's --json result. Complete is false when
// the command failed part way: the batches before the failure stay deleted.
type deletePrefixJSON struct {
	Prefix   string `json:"prefix"`
	Deleted  int    `json:"deleted"`
	Complete bool   `json:"complete"`
}

func (a *app) deletePrefixCommand() *cobra.Command {
	var (
		cf      cacheFlags
		yes     bool
		allKeys bool
	)
	cmd := &cobra.Command{
		Use:   "delete-prefix PREFIX",
		Short: "Remove every entry whose key starts with PREFIX",
		Long: `Remove every entry whose key starts with PREFIX, under the key prefix and
version (--key-prefix, --key-version): a namespace such as "user:42:" or
"session:". Other key prefixes and versions are untouched; clear is the
command that empties the whole table. Prints how many live entries were
removed (expired ones in the range go too, uncounted); 0 is a result, not
a miss (exit 0).

It walks the key range on the primary key index in batches of a few
thousand rows, each its own short statement: a huge namespace is removed
without long locks, and an entry written into it meanwhile may survive. If
it fails or is interrupted part way, what was removed stays removed: it
says how many, and exits 1.

On a terminal it says how many live entries match (counting up to 10,000)
and asks for confirmation; otherwise it needs --yes (without it: exit 2,
before connecting). An empty PREFIX would match every key under the key
prefix and version, so it is refused unless --all-keys says that is meant
(PREFIX may then be left out); --all-keys still asks, or needs --yes.`,
		Example: `  dbcache delete-prefix user:42:
  dbcache delete-prefix session: --key-prefix myapp --yes
  dbcache delete-prefix --all-keys --key-prefix myapp --key-version 3 --yes`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			prefix := ""
			if len(args) == 1 {
				prefix = args[0]
			}
			switch {
			case len(args) == 0 && !allKeys:
				return usagef("accepts 1 arg(s), received 0: give the PREFIX to remove, or --all-keys for every key under the key prefix and version")
			case prefix == "" && !allKeys:
				return usagef("an empty PREFIX matches every key under the key prefix and version: pass --all-keys if that is what you mean")
			case prefix != "" && allKeys:
				return usagef("--all-keys removes every key under the key prefix and version: drop PREFIX %s, or drop --all-keys", strconv.Quote(prefix))
			}
			if !yes && !a.cfg.StdinIsTerminal {
				return confirmationRequired("delete-prefix removes entries: pass --yes to confirm (there is no terminal to ask on)")
			}
			o, err := a.openStore(ctx, cmd, &cf, 1)
			if err != nil {
				return err
			}
			defer o.close()
			if !yes {
				n, err := countPrefix(ctx, o.keys, prefix)
				if err != nil {
					return prefixError(err, prefix)
				}
				if n == 0 {
					// Nothing to ask about: nothing is removed either,
					// so nothing written since the count goes unasked.
					return a.printDeleted(prefix, 0, nil)
				}
				version := 1 // the library's default, as openCache leaves it
				if cmd.Flags().Changed("key-version") {
					version = cf.version
				}
				if err := a.confirm(deletePrefixQuestion(o.maker, prefix, n, cf.prefix, version)); err != nil {
					return err
				}
			}
			n, err := o.keys.DeletePrefix(ctx, prefix)
			if err != nil {
				err = prefixError(err, prefix)
				var ue *usageError
				if errors.As(err, &ue) {
					return err // refused before anything was removed
				}
			}
			return a.printDeleted(prefix, n, err)
		},
	}
	cf.add(cmd.Flags())
	cmd.Flags().BoolVarP(&yes, "yes", "y", false, "do not ask for confirmation")
	cmd.Flags().BoolVar(&allKeys, "all-keys", false, "remove every key under the key prefix and version (PREFIX empty or left out)")
	return cmd
}

// printDeleted prints delete-prefix's result, also after a failure part
// way (err), which then ends the command once the count is out.
func (a *app) printDeleted(prefix string, n int, err error) error {
	if err != nil && n == 0 {
		return err // nothing was done: the error says it all
	}
	if a.g.json {
		if werr := a.writeJSON(deletePrefixJSON{Prefix: prefix, Deleted: n, Complete: err == nil}); werr != nil {
			return werr
		}
		return err
	}
	if err != nil {
		a.println("deleted %s, then stopped: the rest of the prefix remains", countOf(int64(n), "entry", "entries"))
		return err
	}
	a.println("deleted %s", countOf(int64(n), "entry", "entries"))
	return nil
}

// countPrefix counts the live entries under prefix, up to one past
// promptCountCap.
func countPrefix(ctx context.Context, cache dbcache.KeyLister, prefix string) (int, error) {
	n := 0
	for _, err := range cache.Keys(ctx, prefix) {
		if err != nil {
			return 0, err
		}
		n++
		if n > promptCountCap {
			break
		}
	}
	return n, nil
}

// deletePrefixQuestion is the confirmation prompt: how many live entries,
// which caller keys, and the stored keys they are (so the key prefix and
// version in force are plain to see).
func deletePrefixQuestion(cache dbcache.KeyMaker, prefix string, n int, keyPrefix string, version int) string {
	count := countOf(int64(n), "live entry", "live entries")
	if n > promptCountCap {
		count = fmt.Sprintf("more than %s live entries", humanCount(promptCountCap))
	}
	stored := quoteKey(cache.MakeKey(prefix))
	if prefix == "" {
		return fmt.Sprintf("Remove %s: every key under key prefix %s and version %d (stored keys starting %s; other prefixes and versions stay)?",
			count, quoteKey(keyPrefix), version, stored)
	}
	return fmt.Sprintf("Remove %s whose key starts with %s (stored keys starting %s)?", count, quoteKey(prefix), stored)
}
