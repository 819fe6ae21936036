package notmigrated_test

import (
	"errors"
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dbcache/dbcache/internal/notmigrated"
)

func TestSentinels(t *testing.T) {
	t.Parallel()
	require.ErrorIs(t, notmigrated.Behind, notmigrated.Err)
	require.NotErrorIs(t, notmigrated.Err, notmigrated.Behind)
	child := notmigrated.New("culling: table not found", notmigrated.Err)
	require.Equal(t, "culling: table not found", child.Error(), "the parent's message is not repeated")
	wrapped := fmt.Errorf("culling: pass: %w", child)
	require.ErrorIs(t, wrapped, child)
	require.ErrorIs(t, wrapped, notmigrated.Err)
	require.NotErrorIs(t, wrapped, notmigrated.Behind)
	require.False(t, errors.Is(notmigrated.New("x", notmigrated.Err), notmigrated.New("x", notmigrated.Err)), "two sentinels are two")
}
