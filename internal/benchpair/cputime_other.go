//go:build !unix

package benchpair

import "time"

// ProcessCPU is 0 where getrusage is not available.
func ProcessCPU() time.Duration { return 0 }
