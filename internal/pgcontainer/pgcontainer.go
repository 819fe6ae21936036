// Package pgcontainer runs internal/pgserver's throwaway servers in Docker
// containers, through testcontainers. It is a module of its own so that
// testcontainers and Docker's client stay out of the library module's
// graph: a program that imports it (for its init, which registers the
// driver) can start containers: the dbcache CLI, the integration suite.
// Not for library code.
package pgcontainer

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/network"
	"github.com/moby/moby/client"
	"github.com/testcontainers/testcontainers-go"
	tclog "github.com/testcontainers/testcontainers-go/log"
	tcpostgres "github.com/testcontainers/testcontainers-go/modules/postgres"
	"github.com/testcontainers/testcontainers-go/wait"

	"github.com/dbcache/dbcache/internal/pgserver"
)

func init() { pgserver.RegisterContainerDriver(driver{}) }

// driver is pgserver's ContainerDriver.
type driver struct{}

func (driver) Start(ctx context.Context, cfg pgserver.Config, spawnReaper func(string) (func(), error)) (pgserver.StartedContainer, error) {
	if noReaper {
		spawnReaper = func(string) (func(), error) { return func() {}, nil }
	}
	return startContainer(ctx, cfg, spawnReaper)
}

// noReaper, set by a test, starts containers without a reaper: a run
// killed together with its reaper.
var noReaper bool

func (driver) RemoveByID(ctx context.Context, id string) { removeContainerByID(ctx, id) }

// labelOwner marks pgserver's containers with "<hostname>/<pid>" of the
// process that started them, so the next Start can remove those of dead
// processes. A variable so tests can keep their containers out of other
// processes' sweeps.
var labelOwner = "org.dbcache.pgserver.owner"

// containerInstance is a server in a container.
type containerInstance struct {
	ctr *tcpostgres.PostgresContainer
	cli *testcontainers.DockerClient
}

// dockerClient connects to the Docker engine testcontainers would use,
// within seconds.
func dockerClient(ctx context.Context, logger *slog.Logger) (cli *testcontainers.DockerClient, err error) {
	// testcontainers prints a banner and its progress to stderr by default;
	// they go to the first caller's logger, at debug level, with the rest.
	// (Its default logger is a global that is not safe to set concurrently.)
	tcLogOnce.Do(func() { tclog.SetDefault(tcLogger{logger}) })
	// testcontainers has panicked on broken Docker setups: report it as the
	// error it is.
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%v", r)
		}
	}()
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	return testcontainers.NewDockerClientWithOpts(ctx)
}

var containerSweepOnce, tcLogOnce sync.Once

func startContainer(ctx context.Context, cfg pgserver.Config, spawnReaper func(string) (func(), error)) (st pgserver.StartedContainer, err error) {
	defer func() {
		if r := recover(); r != nil {
			st, err = pgserver.StartedContainer{}, fmt.Errorf("testcontainers: %v", r)
		}
	}()
	cli, err := dockerClient(ctx, cfg.Logger)
	if err != nil {
		return st, pgserver.Unavailablef("Docker is not reachable: %v", err)
	}
	containerSweepOnce.Do(func() { sweepStaleContainers(ctx, cli, labelOwner, cfg.Logger) })
	if err := ensureImage(ctx, cli, cfg.Image, cfg.Logger); err != nil {
		_ = cli.Close()
		return st, pgserver.Unavailablef("no image %s: %v (set %s to an image on this machine)", cfg.Image, err, pgserver.EnvImage)
	}
	database := cfg.Database
	if database == "" {
		database = "postgres"
	}
	// The reaper is spawned as soon as the container exists, before it
	// starts, so a process that dies while it starts leaves nothing.
	var reaperMu sync.Mutex
	stopReaper := func() {}
	spawn := func(_ context.Context, c testcontainers.Container) error {
		stop, err := spawnReaper(c.GetContainerID())
		if err != nil {
			cfg.Logger.Debug("pgserver: no reaper; a killed run leaves the container to the next one", "err", err)
			return nil
		}
		reaperMu.Lock()
		stopReaper = stop
		reaperMu.Unlock()
		return nil
	}
	host, _ := os.Hostname()
	settings, err := cfg.SettingArgs()
	if err != nil {
		_ = cli.Close()
		return st, err
	}
	ctr, err := tcpostgres.Run(ctx, cfg.Image,
		tcpostgres.WithDatabase(database),
		tcpostgres.WithUsername(pgserver.Superuser),
		tcpostgres.WithPassword(pgserver.ContainerPassword),
		testcontainers.WithEnv(map[string]string{
			"POSTGRES_HOST_AUTH_METHOD": "trust",
			// The cluster an installed server gets (initdb below): the
			// official image's default is en_US.utf8.
			"POSTGRES_INITDB_ARGS": "--encoding=UTF8 --locale=C",
		}),
		// PostgreSQL's defaults: the module's own command turns fsync off.
		testcontainers.WithCmd(append([]string{"postgres"}, settings...)...),
		testcontainers.WithLabels(map[string]string{labelOwner: host + "/" + strconv.Itoa(os.Getpid())}),
		// Published on loopback only (Docker's default is every interface).
		testcontainers.WithHostConfigModifier(func(hc *container.HostConfig) {
			hc.PortBindings = network.PortMap{
				network.MustParsePort("5432/tcp"): {{HostIP: netip.MustParseAddr(pgserver.Loopback), HostPort: "0"}},
			}
		}),
		// The module's BasicWaitStrategies (the second "ready" log line,
		// then the port) with a longer deadline than its 60 s: initdb on a
		// busy two-core machine can take longer.
		testcontainers.WithWaitStrategyAndDeadline(cfg.StartTimeout,
			wait.ForLog("database system is ready to accept connections").WithOccurrence(2).WithStartupTimeout(cfg.StartTimeout),
			wait.ForListeningPort("5432/tcp").WithStartupTimeout(cfg.StartTimeout),
		),
		testcontainers.WithAdditionalLifecycleHooks(testcontainers.ContainerLifecycleHooks{
			PostCreates: []testcontainers.ContainerHook{spawn},
		}),
		testcontainers.WithLogger(tcLogger{cfg.Logger}),
	)
	inst := &containerInstance{ctr: ctr, cli: cli}
	defer func() {
		if err != nil {
			if ctr != nil {
				_ = inst.Remove(context.WithoutCancel(ctx))
			}
			_ = cli.Close()
			reaperMu.Lock()
			stopReaper()
			reaperMu.Unlock()
		}
	}()
	if err != nil {
		return st, fmt.Errorf("start a container from %s: %w", cfg.Image, err)
	}
	port, err := inst.mappedPort(ctx)
	if err != nil {
		return st, err
	}
	reaperMu.Lock()
	defer reaperMu.Unlock()
	return pgserver.StartedContainer{
		Instance:    inst,
		Port:        port,
		Description: fmt.Sprintf("a PostgreSQL container from %s (%.12s)", cfg.Image, ctr.GetContainerID()),
		StopReaper:  stopReaper,
	}, nil
}

// ensureImage pulls image once if the machine does not have it. One
// attempt: testcontainers' own pull retries transient errors for up to 15
// minutes, and on a machine with no registry every error looks transient.
func ensureImage(ctx context.Context, cli *testcontainers.DockerClient, image string, logger *slog.Logger) error {
	if _, err := cli.ImageInspect(ctx, image); err == nil {
		return nil
	}
	logger.Debug("pgserver: pulling " + image)
	resp, err := cli.ImagePull(ctx, image, client.ImagePullOptions{})
	if err != nil {
		return fmt.Errorf("pull: %w", err)
	}
	if err := resp.Wait(ctx); err != nil {
		return fmt.Errorf("pull: %w", err)
	}
	_, err = cli.ImageInspect(ctx, image)
	return err
}

func (c *containerInstance) mappedPort(ctx context.Context) (uint16, error) {
	p, err := c.ctr.MappedPort(ctx, "5432/tcp")
	if err != nil {
		return 0, fmt.Errorf("container port: %w", err)
	}
	return p.Num(), nil
}

// Start starts the stopped container; Docker maps a new host port.
func (c *containerInstance) Start(ctx context.Context) (uint16, error) {
	if err := c.ctr.Start(ctx); err != nil {
		return 0, err
	}
	return c.mappedPort(ctx)
}

// Shutdown sends SIGINT to the postmaster, PID 1 in the official image and
// in CI's, through the shell: every image has one, not every one /bin/kill.
func (c *containerInstance) Shutdown(ctx context.Context) error {
	code, _, err := c.ctr.Exec(ctx, []string{"sh", "-c", "kill -INT 1"})
	if err != nil {
		return fmt.Errorf("signal the postmaster: %w", err)
	}
	if code != 0 {
		return fmt.Errorf("kill -INT 1 exited %d", code)
	}
	return c.waitStopped(ctx)
}

// Crash SIGKILLs the container: every process at once. (Docker's stop
// would send the image's stop signal first.)
func (c *containerInstance) Crash(ctx context.Context) error {
	if _, err := c.cli.ContainerKill(ctx, c.ctr.GetContainerID(), client.ContainerKillOptions{Signal: "KILL"}); err != nil {
		return err
	}
	return c.waitStopped(ctx)
}

func (c *containerInstance) waitStopped(ctx context.Context) error {
	for {
		st, err := c.ctr.State(ctx)
		if err != nil {
			return err
		}
		if !st.Running {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("the container did not stop: %w", ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Remove kills and removes the container with its anonymous volume.
func (c *containerInstance) Remove(ctx context.Context) error {
	err := c.ctr.Terminate(ctx, testcontainers.StopTimeout(0))
	_ = c.cli.Close()
	return err
}

func (c *containerInstance) LogTail(ctx context.Context) string {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	rc, err := c.ctr.Logs(ctx)
	if err != nil {
		return ""
	}
	defer rc.Close()
	b, _ := io.ReadAll(rc)
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > 8 {
		lines = lines[len(lines)-8:]
	}
	return "; container log: " + strings.Join(lines, " | ")
}

// removeContainerByID is the reaper's removal of a container.
func removeContainerByID(ctx context.Context, id string) {
	cli, err := dockerClient(ctx, slog.New(slog.DiscardHandler))
	if err != nil {
		return
	}
	defer cli.Close()
	_, _ = cli.ContainerRemove(ctx, id, client.ContainerRemoveOptions{Force: true, RemoveVolumes: true})
}

// sweepStaleContainers removes the containers of dead processes on this
// host (marked with label) that their reaper did not (it died too).
func sweepStaleContainers(ctx context.Context, cli *testcontainers.DockerClient, label string, logger *slog.Logger) {
	host, _ := os.Hostname()
	res, err := cli.ContainerList(ctx, client.ContainerListOptions{All: true, Filters: make(client.Filters).Add("label", label)})
	if err != nil {
		return
	}
	for _, c := range res.Items {
		h, pid, ok := strings.Cut(c.Labels[label], "/")
		n, err := strconv.Atoi(pid)
		if !ok || err != nil || h != host || pgserver.ProcessAlive(n) {
			continue
		}
		logger.Debug("pgserver: removing a stale container", "id", c.ID)
		_, _ = cli.ContainerRemove(ctx, c.ID, client.ContainerRemoveOptions{Force: true, RemoveVolumes: true})
	}
}

// tcLogger routes testcontainers' progress lines to the logger at debug.
type tcLogger struct{ l *slog.Logger }

func (t tcLogger) Printf(format string, args ...any) {
	t.l.Debug("testcontainers: " + strings.TrimSpace(fmt.Sprintf(format, args...)))
}
