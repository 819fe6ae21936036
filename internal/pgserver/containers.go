package pgserver

import (
	"context"
	"os"
	"sync"
)

// ContainerPassword is the superuser's password in containers. The
// official image is told to trust connections (which only loopback can
// make), so it is never checked there.
const ContainerPassword = "postgres"

// Loopback is the only address servers listen on (or are published on).
const Loopback = loopback

// ContainerDriver runs servers in containers. Containers need
// testcontainers and Docker's client, which the library's module leaves
// out of its graph: the module github.com/dbcache/dbcache/internal/pgcontainer
// registers a driver in its init, so a binary that imports it (the CLI, the
// integration suite) can start containers, and one that does not (the
// library's own tests) starts servers from the installed PostgreSQL only.
type ContainerDriver interface {
	// Start starts a server in a container for cfg (defaults filled; its
	// Settings as SettingArgs gives them), within ctx, and returns it once
	// its port is known. spawnReaper starts the reaper of a container as
	// soon as it exists. On error nothing is left running.
	Start(ctx context.Context, cfg Config, spawnReaper func(containerID string) (stop func(), err error)) (StartedContainer, error)
	// RemoveByID removes a container, as a reaper does.
	RemoveByID(ctx context.Context, id string)
}

// StartedContainer is a container a ContainerDriver started.
type StartedContainer struct {
	Instance    Instance
	Port        uint16
	Description string
	// StopReaper tells the container's reaper to go; nil when none runs.
	StopReaper func()
}

// Instance is one server as a ContainerDriver runs it.
type Instance interface {
	// Start starts the stopped server and returns its port.
	Start(ctx context.Context) (uint16, error)
	// Shutdown is a fast shutdown: open transactions roll back, clients
	// are disconnected, a checkpoint is written.
	Shutdown(ctx context.Context) error
	// Crash kills every server process at once.
	Crash(ctx context.Context) error
	// Remove stops the server if it runs and deletes everything of it.
	Remove(ctx context.Context) error
	// LogTail is the end of the server's log, for error messages.
	LogTail(ctx context.Context) string
}

var (
	containersMu sync.Mutex
	containers   ContainerDriver
)

// RegisterContainerDriver makes Start able to run containers with d. A
// process started as the reaper of a container (see spawnReaper) reaps it
// here and exits: the container driver's package initialises after this
// one, so this is the first moment it can.
func RegisterContainerDriver(d ContainerDriver) {
	containersMu.Lock()
	containers = d
	containersMu.Unlock()
	if spec := os.Getenv(reaperEnv); spec != "" {
		os.Exit(reap(spec))
	}
}

func containerDriver() ContainerDriver {
	containersMu.Lock()
	defer containersMu.Unlock()
	return containers
}

// Unavailablef is an error that wraps ErrUnavailable: the way it describes
// cannot start a server on this machine.
func Unavailablef(format string, args ...any) error { return unavailablef(format, args...) }

// SettingArgs returns Config.Settings as postgres arguments, -c name=value,
// in name order, or an error naming a setting that is not one.
func (c Config) SettingArgs() ([]string, error) { return c.settingArgs() }

// ProcessAlive reports whether a process of this host with id pid runs
// (on systems where that cannot be told, every process counts as alive).
func ProcessAlive(pid int) bool { return alive(pid) }

func startContainer(ctx context.Context, cfg Config) (*Server, error) {
	d := containerDriver()
	if d == nil {
		return nil, unavailablef("this program runs no containers: it does not import internal/pgcontainer (the CLI and the integration suite do)")
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.StartTimeout)
	defer cancel()
	st, err := d.Start(ctx, cfg, func(id string) (func(), error) {
		return spawnReaperFunc(reaperSpec{Container: id})
	})
	if err != nil {
		return nil, err
	}
	s := newServer(Container, cfg.Database, st.Description, containerInstance{st.Instance}, st.Port)
	if st.StopReaper != nil {
		s.stopReaper = st.StopReaper
	}
	if err := s.waitReady(ctx); err != nil {
		_ = s.Remove(context.WithoutCancel(ctx))
		return nil, err
	}
	return s, nil
}

// removeContainerByID is the reaper's removal of a container.
func removeContainerByID(ctx context.Context, id string) {
	if d := containerDriver(); d != nil {
		d.RemoveByID(ctx, id)
	}
}

// containerInstance is a driver's Instance as an instance.
type containerInstance struct{ Instance }

func (c containerInstance) start(ctx context.Context) (uint16, error) { return c.Start(ctx) }
func (c containerInstance) shutdown(ctx context.Context) error        { return c.Shutdown(ctx) }
func (c containerInstance) crash(ctx context.Context) error           { return c.Crash(ctx) }
func (c containerInstance) remove(ctx context.Context) error          { return c.Remove(ctx) }
func (c containerInstance) logTail(ctx context.Context) string        { return c.LogTail(ctx) }
