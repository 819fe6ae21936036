package cli

import (
	"context"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dbcache/dbcache/internal/dbtest"
)

// migrate up --unlogged creates the table unlogged; migrate persistence
// shows it, and changes it only with --yes (or a yes on a terminal).
func TestMigratePersistence(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := dbtest.NewSchema(t)
	b := &testBundle{conn: []string{"--database-url", s.URL, "--schema", s.Name}, s: s}

	code, out, errOut := b.run(ctx, Config{}, "migrate", "up", "--unlogged")
	require.Equal(t, ExitOK, code, errOut)
	require.Contains(t, out, "migrated up")
	code, out, errOut = b.run(ctx, Config{}, "migrate", "persistence")
	require.Equal(t, ExitOK, code, errOut)
	require.Equal(t, "unlogged\n", out)

	// No terminal, no --yes: refused before anything changes.
	code, _, errOut = b.run(ctx, Config{}, "migrate", "persistence", "logged")
	require.Equal(t, ExitUsage, code)
	require.Contains(t, errOut, "--yes")
	code, out, _ = b.run(ctx, Config{}, "migrate", "persistence")
	require.Equal(t, ExitOK, code)
	require.Equal(t, "unlogged\n", out)

	code, out, errOut = b.run(ctx, Config{}, "migrate", "persistence", "logged", "--yes", "--json")
	require.Equal(t, ExitOK, code, errOut)
	require.JSONEq(t, `{"persistence":"logged","changed":true}`, out)

	// On a terminal it asks; "n" changes nothing.
	code, _, errOut = b.run(ctx, Config{StdinIsTerminal: true, Stdin: strings.NewReader("n\n")}, "migrate", "persistence", "unlogged")
	require.Equal(t, ExitFailure, code)
	require.Contains(t, errOut, "Rewrite the cache table as unlogged?")
	code, out, _ = b.run(ctx, Config{}, "migrate", "persistence")
	require.Equal(t, ExitOK, code)
	require.Equal(t, "logged\n", out)
	code, out, errOut = b.run(ctx, Config{StdinIsTerminal: true, Stdin: strings.NewReader("y\n")}, "migrate", "persistence", "unlogged")
	require.Equal(t, ExitOK, code, errOut)
	require.Equal(t, "unlogged (was logged)\n", out)

	code, _, errOut = b.run(ctx, Config{}, "migrate", "persistence", "sometimes", "--yes")
	require.Equal(t, ExitUsage, code)
	require.Contains(t, errOut, "logged or unlogged")
}
