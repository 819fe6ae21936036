package dbtest

import (
	"context"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

// EnvProfile makes every schema of the run live in a database with a
// production default instead of the server's own database: a comma-separated
// list of
//
//   - "icu": the database's default collation is ICU en-US (its text order
//     is not the byte order of the cache's key column);
//   - "repeatable-read" or "serializable": the database's
//     default_transaction_isolation, so every session (every pool a test
//     opens) starts its transactions at that level unless it says
//     otherwise.
//
// The database (the server database's name plus _icu, _rr or _ser) is
// created on first use and kept for later runs. .ci/run runs the dbcache and
// culling suites once with each of "icu" and "repeatable-read".
const EnvProfile = "DBCACHE_TEST_DB_PROFILE"

// Profile is the database defaults a run's schemas live under.
type Profile struct {
	// Collation is the database's default collation.
	Collation Collation
	// Isolation is its default_transaction_isolation ("" for the server's
	// default, read committed).
	Isolation string
}

// ParseProfile parses EnvProfile's value.
func ParseProfile(s string) (Profile, error) {
	p := Profile{Collation: CollationC}
	for _, f := range strings.Split(s, ",") {
		switch strings.TrimSpace(strings.ToLower(f)) {
		case "":
		case "icu":
			p.Collation = CollationLinguistic
		case "repeatable-read", "repeatable read":
			p.Isolation = "repeatable read"
		case "serializable":
			p.Isolation = "serializable"
		default:
			return Profile{}, fmt.Errorf("%s=%q: unknown %q (want icu, repeatable-read or serializable, comma-separated)", EnvProfile, s, f)
		}
	}
	return p, nil
}

// RunProfile returns the profile of this run (EnvProfile), or an error for
// a value it cannot parse.
func RunProfile() (Profile, error) { return ParseProfile(os.Getenv(EnvProfile)) }

// suffix is the database name suffix for the profile: "" for the server's
// own database.
func (p Profile) suffix() string {
	var s string
	if p.Collation == CollationLinguistic {
		s += "_icu"
	}
	switch p.Isolation {
	case "repeatable read":
		s += "_rr"
	case "serializable":
		s += "_ser"
	}
	return s
}

var (
	profileMu  sync.Mutex
	profileDBs = map[Profile]*profileDB{}
)

type profileDB struct {
	once sync.Once
	url  string
	err  error
}

// profileDatabase returns the DSN of the database with profile p beside the
// one base names (base itself for the plain profile), creating it if
// missing.
func profileDatabase(base string, p Profile) (string, error) {
	if p.suffix() == "" {
		return base, nil
	}
	profileMu.Lock()
	d := profileDBs[p]
	if d == nil {
		d = &profileDB{}
		profileDBs[p] = d
	}
	profileMu.Unlock()
	d.once.Do(func() { d.url, d.err = ensureDatabase(base, p) })
	return d.url, d.err
}

// ensureDatabase creates (if missing) the database for p beside base, sets
// its default isolation, checks both, and returns its DSN.
func ensureDatabase(base string, p Profile) (string, error) {
	cfg, err := pgx.ParseConfig(base)
	if err != nil {
		return "", err
	}
	name := cfg.Database + p.suffix()
	dsn, err := withDatabase(base, name)
	if err != nil {
		return "", err
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return "", err
	}
	defer conn.Close(context.Background())
	var exists bool
	if err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)`, name).Scan(&exists); err != nil {
		return "", err
	}
	ident := pgx.Identifier{name}.Sanitize()
	if !exists {
		if p.Collation == CollationLinguistic {
			_, err = conn.Exec(ctx, "CREATE DATABASE "+ident+" LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C.UTF-8' TEMPLATE template0")
			if err != nil && !isDuplicate(err) {
				// A server without the C.UTF-8 OS locale still has "C".
				_, err = conn.Exec(ctx, "CREATE DATABASE "+ident+" LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C' TEMPLATE template0")
			}
		} else {
			_, err = conn.Exec(ctx, "CREATE DATABASE "+ident+" TEMPLATE template0 ENCODING 'UTF8' LOCALE 'C'")
		}
		if err != nil && !isDuplicate(err) {
			return "", fmt.Errorf("create database %s (needs CREATEDB, and a server built with ICU for icu): %w", name, err)
		}
	}
	if p.Isolation != "" {
		// Concurrent test processes may both set it; the row update of one
		// can fail against the other's ("tuple concurrently updated"), so
		// check first and retry.
		for attempt := 0; ; attempt++ {
			var cur string
			err := conn.QueryRow(ctx, `SELECT coalesce((SELECT option_value FROM pg_db_role_setting s
				JOIN pg_database d ON d.oid = s.setdatabase, pg_options_to_table(s.setconfig)
				WHERE d.datname = $1 AND s.setrole = 0 AND option_name = 'default_transaction_isolation'), '')`, name).Scan(&cur)
			if err == nil && cur == p.Isolation {
				break
			}
			if err == nil {
				_, err = conn.Exec(ctx, "ALTER DATABASE "+ident+" SET default_transaction_isolation TO '"+p.Isolation+"'")
			}
			if err != nil && attempt >= 5 {
				return "", fmt.Errorf("set the default isolation of database %s: %w", name, err)
			}
		}
	}
	// Check that a new session really gets the defaults: the point.
	lc, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return "", err
	}
	defer lc.Close(context.Background())
	var first, iso string
	if err := lc.QueryRow(ctx, `SELECT (SELECT k FROM unnest(ARRAY['B', 'a']) AS k ORDER BY k LIMIT 1), current_setting('transaction_isolation')`).Scan(&first, &iso); err != nil {
		return "", err
	}
	if p.Collation == CollationLinguistic && first != "a" {
		return "", fmt.Errorf("database %s sorts %q first: not a linguistic collation", name, first)
	}
	if p.Isolation != "" && iso != p.Isolation {
		return "", fmt.Errorf("database %s starts sessions at %s, not %s", name, iso, p.Isolation)
	}
	return dsn, nil
}
