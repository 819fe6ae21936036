package sharded

import (
	"testing"

	"github.com/dbcache/dbcache/internal/dbtest"
)

func TestMain(m *testing.M) { dbtest.Main(m) }
