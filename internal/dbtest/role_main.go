package dbtest

// RunRole runs the role this process was started in (Start), if any, and
// reports whether it was, with the exit code: for a package whose TestMain
// starts servers of its own instead of calling Main. Call it first.
func RunRole() (code int, ok bool) { return runRole() }
