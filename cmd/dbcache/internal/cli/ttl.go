package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/spf13/cobra"

	"github.com/dbcache/dbcache/dbcache"
)

func (a *app) ttlCommand() *cobra.Command {
	var cf cacheFlags
	cmd := &cobra.Command{
		Use:   "ttl KEY",
		Short: "Print how long KEY's live entry has left",
		Long: `Print the remaining lifetime of KEY's live entry, by the database's clock:
a duration such as 4m59.9s (cut, never rounded up, to a tenth of a second
above one second, to the millisecond below), or "never" for an entry that
never expires. A key with no live entry prints nothing on stdout, a line on
stderr, and exits 3, as get does.

With --json: {"key":…,"found":true,"ttl_seconds":…,"never_expires":…}, with
ttl_seconds to the microsecond, and null when never_expires is true; a miss
is {"key":…,"found":false} (exit 3).`,
		Example: `  dbcache ttl session:42
  dbcache ttl session:42 --json | jq .ttl_seconds`,
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
			ttl, err := o.ttl.TTL(ctx, key)
			if errors.Is(err, dbcache.ErrMiss) {
				type out struct {
					keyJSON
					Found bool `json:"found"`
				}
				return a.miss(key, out{keyJSON: keyJSON{key}})
			}
			if err != nil {
				return keyError(err, key)
			}
			if a.g.json {
				// Built by hand so the fields read as get --json's do.
				k, err := json.Marshal(key)
				if err != nil {
					return err
				}
				_, err = fmt.Fprintf(a.out, "{\"key\":%s,\"found\":true,%s}\n", k, ttlFields(ttl))
				return err
			}
			a.println("%s", humanTTL(ttl))
			return nil
		},
	}
	cf.add(cmd.Flags())
	cf.addKeyFile(cmd.Flags())
	return cmd
}

// ttlFields renders a remaining lifetime (a Timeout from Cache.TTL or
// GetWithTTL: Forever or a positive TTL) as the JSON fields
// "ttl_seconds":…,"never_expires":… that ttl --json and get --json share:
// seconds to the microsecond, or null and true for an entry that never
// expires.
func ttlFields(t dbcache.Timeout) string {
	d, ok := t.Duration()
	if t.IsForever() || !ok {
		return `"ttl_seconds":null,"never_expires":true`
	}
	return `"ttl_seconds":` + strconv.FormatFloat(d.Seconds(), 'f', -1, 64) + `,"never_expires":false`
}

// humanTTL renders a remaining lifetime for people: "never", or the
// duration cut (never rounded up, so it never claims more time than is
// left) to a tenth of a second from one second up, to the millisecond
// below that, and shown to the microsecond below a millisecond.
func humanTTL(t dbcache.Timeout) string {
	d, ok := t.Duration()
	if t.IsForever() || !ok {
		return "never"
	}
	var cut time.Duration
	switch {
	case d >= time.Second:
		cut = d.Truncate(100 * time.Millisecond)
	case d >= time.Millisecond:
		cut = d.Truncate(time.Millisecond)
	default:
		cut = d.Truncate(time.Microsecond)
	}
	return cut.String()
}
