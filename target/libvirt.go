package target

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"hybridbridge/guest"
)

// LibvirtPackages are the Debian packages that provide virsh and a libvirt daemon for QEMU
// (scripts/setup.sh installs them).
const LibvirtPackages = "libvirt-daemon-system libvirt-clients libvirt-daemon-driver-qemu"

// defaultLibvirtURI is the connection used unless $LIBVIRT_DEFAULT_URI names another, as virsh
// itself does: libvirt's domains are usually the system daemon's.
const defaultLibvirtURI = "qemu:///system"

// virshTimeout bounds every virsh call whose context has no earlier deadline: libvirtd can wedge
// behind a stuck QEMU monitor, and inspection must not hang with it.
const virshTimeout = 60 * time.Second

// ErrNoDomain means libvirt knows no domain of that name (or id, or UUID).
var ErrNoDomain = errors.New("no such libvirt domain")

// OpenLibvirt attaches to a running or paused libvirt domain. libvirt holds the domain's QEMU
// monitor itself (a second client gets no greeting), so every monitor command goes through
// `virsh qemu-monitor-command`, and pause and resume through `virsh suspend` and `resume` so that
// libvirt's own idea of the domain's state stays true (libvirt notes the monitor commands in the
// domain's log as "tainted: custom-monitor"; they only read). Resume undoes only the target's own Pause:
// a domain that was paused already stays paused. The RAM is read from the QEMU process, which must
// run on this machine.
func OpenLibvirt(ctx context.Context, domain string) (*Process, error) {
	v, err := newVirsh(domain)
	if err != nil {
		return nil, err
	}
	if _, err := v.State(ctx); err != nil {
		return nil, err
	}
	pid, err := v.pid(ctx)
	if err != nil {
		return nil, err
	}
	p, err := NewProcess(ctx, pid, ProcessOptions{
		Name:    v.name(),
		Kind:    KindLibvirt,
		Monitor: v,
		Pause:   v.Suspend,
		Resume:  v.Resume,
		State:   v.State,
	})
	if err != nil {
		// Most of NewProcess's errors name the target already.
		if !strings.HasPrefix(err.Error(), v.name()) {
			err = fmt.Errorf("%s: %w", v.name(), err)
		}
		return nil, err
	}
	return p, nil
}

// virsh runs virsh against one domain. It holds no connection: each call is a virsh process, so
// it is safe for concurrent use and has nothing to close.
type virsh struct {
	path   string // the virsh program
	uri    string // the libvirt connection
	domain string // as the user named it: a name, an id or a UUID

	mu sync.Mutex // serialises Suspend and Resume, and guards suspended
	// suspended says that Suspend paused the domain and Resume has not resumed it since.
	suspended bool
}

var _ Monitor = (*virsh)(nil)

func newVirsh(domain string) (*virsh, error) {
	if domain == "" {
		return nil, errors.New("libvirt domain: empty name")
	}
	path, err := exec.LookPath("virsh")
	if err != nil {
		return nil, fmt.Errorf("libvirt domain %s: virsh not found: install Debian's %s (scripts/setup.sh does)", domain, LibvirtPackages)
	}
	uri := os.Getenv("LIBVIRT_DEFAULT_URI")
	if uri == "" {
		uri = defaultLibvirtURI
	}
	// The RAM is read through /proc of the QEMU process: a domain on another host, or of another
	// hypervisor, cannot be inspected this way.
	u, err := url.Parse(uri)
	if err != nil {
		return nil, fmt.Errorf("libvirt domain %s: bad connection URI %q: %w", domain, uri, err)
	}
	if driver, _, _ := strings.Cut(u.Scheme, "+"); driver != "qemu" {
		return nil, fmt.Errorf("libvirt domain %s: connection %s is not libvirt's QEMU driver (qemu:///system or qemu:///session)", domain, uri)
	}
	if u.Host != "" {
		return nil, fmt.Errorf("libvirt domain %s: connection %s is to host %s: the domain's QEMU must run on this machine", domain, uri, u.Host)
	}
	return &virsh{path: path, uri: uri, domain: domain}, nil
}

func (v *virsh) name() string { return "libvirt domain " + v.domain }

// run runs `virsh -q -c URI SUBCOMMAND ARGS...` and returns its standard output. A failure carries
// virsh's own message but not the domain's name: Process adds it to monitor errors, the other
// callers themselves.
func (v *virsh) run(ctx context.Context, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, virshTimeout)
	defer cancel()
	// -q drops virsh's own chatter ("Domain X suspended", a blank line after each reply).
	cmd := exec.CommandContext(ctx, v.path, append([]string{"-q", "-c", v.uri}, args...)...)
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			return "", fmt.Errorf("virsh %s: %w", args[0], ctx.Err())
		}
		msg := virshMessage(stderr.String())
		if msg == "" {
			msg = err.Error()
		}
		return "", &virshError{sub: args[0], msg: msg}
	}
	return stdout.String(), nil
}

// virshError is virsh's complaint about a subcommand.
type virshError struct {
	sub string // the subcommand
	msg string // virsh's message, on one line
}

func (e *virshError) Error() string { return fmt.Sprintf("virsh %s: %s", e.sub, e.msg) }

// Is makes a domain libvirt does not know ErrNoDomain and one that stopped running ErrGone.
// virsh has no machine-readable error codes; these are its messages for libvirt's
// VIR_ERR_NO_DOMAIN and VIR_ERR_OPERATION_INVALID on a stopped domain.
func (e *virshError) Is(target error) bool {
	switch target {
	case ErrNoDomain:
		return strings.Contains(e.msg, "failed to get domain") || strings.Contains(e.msg, "Domain not found")
	case ErrGone:
		return strings.Contains(e.msg, "domain is not running")
	}
	return false
}

// virshMessage joins virsh's error lines into one, without their "error: " prefixes.
func virshMessage(stderr string) string {
	var parts []string
	for _, l := range strings.Split(stderr, "\n") {
		l = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(l), "error:"))
		if l != "" {
			parts = append(parts, l)
		}
	}
	return strings.Join(parts, "; ")
}

// State reports the domain's state from libvirt (`virsh domstate`).
func (v *virsh) State(ctx context.Context) (State, error) {
	out, err := v.run(ctx, "domstate", "--domain", v.domain)
	if err != nil {
		if errors.Is(err, ErrNoDomain) {
			return "", fmt.Errorf("%s: %w on %s", v.name(), ErrNoDomain, v.uri)
		}
		return "", fmt.Errorf("%s: %w", v.name(), err)
	}
	switch st := strings.TrimSpace(out); st {
	case "running":
		return Running, nil
	case "paused":
		return Paused, nil
	case "shut off", "crashed":
		return "", fmt.Errorf("%s is %s: %w", v.name(), st, ErrGone)
	default:
		// "in shutdown", "pmsuspended", "blocked": no QEMU vCPU state to inspect consistently.
		return "", fmt.Errorf("%s is %s, not running or paused", v.name(), st)
	}
}

// Suspend pauses the domain through libvirt, unless it is paused already.
func (v *virsh) Suspend(ctx context.Context) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	st, err := v.State(ctx)
	if err != nil || st == Paused {
		return err
	}
	if _, err := v.run(ctx, "suspend", "--domain", v.domain); err != nil {
		return fmt.Errorf("%s: %w", v.name(), err)
	}
	v.suspended = true
	return nil
}

// Resume resumes the domain through libvirt if Suspend paused it; a domain someone else paused is
// theirs to resume.
func (v *virsh) Resume(ctx context.Context) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if !v.suspended {
		return nil
	}
	if _, err := v.run(ctx, "resume", "--domain", v.domain); err != nil {
		return fmt.Errorf("%s: %w", v.name(), err)
	}
	v.suspended = false
	return nil
}

// Run implements Monitor: one QMP command through `virsh qemu-monitor-command`. Like the other
// Monitor methods its errors leave naming the domain to the caller.
func (v *virsh) Run(ctx context.Context, command string, args any) (json.RawMessage, error) {
	req := struct {
		Execute   string `json:"execute"`
		Arguments any    `json:"arguments,omitempty"`
	}{command, args}
	b, err := json.Marshal(req)
	if err != nil {
		return nil, fmt.Errorf("QMP %s: %w", command, err)
	}
	out, err := v.run(ctx, "qemu-monitor-command", "--domain", v.domain, "--cmd", string(b))
	if err != nil {
		return nil, err
	}
	// virsh prints QEMU's reply as it came, exit status 0 even for an error reply.
	var rep struct {
		Return json.RawMessage `json:"return"`
		Error  *struct {
			Class string `json:"class"`
			Desc  string `json:"desc"`
		} `json:"error"`
	}
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		return nil, fmt.Errorf("QMP %s: unreadable reply %.200q: %w", command, out, err)
	}
	if rep.Error != nil {
		return nil, &guest.QMPError{Command: command, Class: rep.Error.Class, Desc: rep.Error.Desc}
	}
	if rep.Return == nil {
		return nil, fmt.Errorf("QMP %s: reply without return: %.200q", command, out)
	}
	return rep.Return, nil
}

// HMP implements Monitor: one human monitor line through `virsh qemu-monitor-command --hmp`.
func (v *virsh) HMP(ctx context.Context, line string) (string, error) {
	out, err := v.run(ctx, "qemu-monitor-command", "--domain", v.domain, "--hmp", "--cmd", line)
	if err != nil {
		return "", err
	}
	// virsh ends QEMU's text with a newline of its own; without it the text is what QMP's
	// human-monitor-command returns.
	return strings.TrimSuffix(out, "\n"), nil
}

// Close implements Monitor: there is no connection to close.
func (v *virsh) Close() error { return nil }

// pid finds the domain's QEMU process. The system daemon records it in a pidfile named after the
// domain; for a domain named by id or UUID, or another daemon, the QEMU process is the one owning
// the vCPU threads QEMU reports.
func (v *virsh) pid(ctx context.Context) (int, error) {
	if v.uri == defaultLibvirtURI {
		if b, err := os.ReadFile(filepath.Join("/run/libvirt/qemu", v.domain+".pid")); err == nil {
			pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
			if err == nil && pid > 0 && processExists(pid) {
				return pid, nil
			}
		}
	}
	ret, err := v.Run(ctx, "query-cpus-fast", nil)
	if err != nil {
		return 0, fmt.Errorf("%s: find the QEMU process: %w", v.name(), err)
	}
	var cpus []struct {
		ThreadID int `json:"thread-id"`
	}
	if err := json.Unmarshal(ret, &cpus); err != nil {
		return 0, fmt.Errorf("%s: find the QEMU process: query-cpus-fast: %w", v.name(), err)
	}
	if len(cpus) == 0 || cpus[0].ThreadID <= 0 {
		return 0, fmt.Errorf("%s: find the QEMU process: QEMU reported no vCPU thread", v.name())
	}
	pid, err := threadGroup(cpus[0].ThreadID)
	if err != nil {
		return 0, fmt.Errorf("%s: find the QEMU process (is it on this machine?): %w", v.name(), err)
	}
	return pid, nil
}

// processExists reports whether pid is a live process.
func processExists(pid int) bool {
	_, err := os.Stat(filepath.Join("/proc", strconv.Itoa(pid)))
	return err == nil
}

// threadGroup returns the process a thread belongs to (its Tgid).
func threadGroup(tid int) (int, error) {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(tid), "status"))
	if err != nil {
		return 0, fmt.Errorf("vCPU thread %d: %w", tid, err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "Tgid:"); ok {
			return strconv.Atoi(strings.TrimSpace(v))
		}
	}
	return 0, fmt.Errorf("vCPU thread %d: no Tgid in /proc status", tid)
}
