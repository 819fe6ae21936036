package compression_test

import (
	"testing"

	"github.com/dbcache/dbcache/internal/dbtest"
	"github.com/dbcache/dbcache/internal/exampledb"
)

func TestMain(m *testing.M) {
	exampledb.Setup()
	dbtest.Main(m)
}
