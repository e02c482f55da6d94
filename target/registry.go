package target

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"
)

// Record is an attached target as `guest attach` registers it: how to reach the VM again, not
// anything about its state (nothing stays paused between commands).
type Record struct {
	Name    string `json:"name"`
	Kind    Kind   `json:"kind"`
	QMP     string `json:"qmp,omitempty"`     // KindQMP: the monitor socket
	PID     int    `json:"pid,omitempty"`     // KindPID (and what the others found, for the listing)
	Libvirt string `json:"libvirt,omitempty"` // KindLibvirt: the domain
	Dump    string `json:"dump,omitempty"`    // KindDump: the file
	// Kernel is the guest's kernel build (a bzImage); empty means the one setup fetched.
	Kernel     string    `json:"kernel,omitempty"`
	AttachedAt time.Time `json:"attached_at"`
}

// ErrNotAttached means no target of that name is registered.
var ErrNotAttached = errors.New("no attached VM of that name")

var validName = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,31}$`)

func recordPath(runDir, name string) string {
	return filepath.Join(runDir, "attached", name+".json")
}

// Check validates a record before it is saved: a good name and exactly one way to reach the VM.
func (r Record) Check() error {
	if !validName.MatchString(r.Name) {
		return fmt.Errorf("bad name %q: lower-case letters, digits, '-' and '_', at most 32", r.Name)
	}
	var ways []string
	for _, w := range []struct {
		set  bool
		kind Kind
	}{{r.QMP != "", KindQMP}, {r.Kind == KindPID, KindPID}, {r.Libvirt != "", KindLibvirt}, {r.Dump != "", KindDump}} {
		if w.set {
			ways = append(ways, string(w.kind))
		}
	}
	if len(ways) != 1 {
		return fmt.Errorf("name exactly one of --qmp, --pid, --libvirt or --dump (got %d)", len(ways))
	}
	if Kind(ways[0]) != r.Kind {
		return fmt.Errorf("record %q: kind %q does not match its %s", r.Name, r.Kind, ways[0])
	}
	if r.Kind == KindPID && r.PID <= 0 {
		return fmt.Errorf("bad PID %d", r.PID)
	}
	return nil
}

// Open reaches the VM the record names.
func (r Record) Open(ctx context.Context) (Target, error) {
	// Each case checks its own error: a nil *Process in a Target would not compare equal to nil.
	switch r.Kind {
	case KindQMP:
		p, err := OpenQMP(ctx, r.QMP)
		if err != nil {
			return nil, err
		}
		return p, nil
	case KindPID:
		p, err := OpenPID(ctx, r.PID)
		if err != nil {
			return nil, err
		}
		return p, nil
	case KindLibvirt:
		p, err := OpenLibvirt(ctx, r.Libvirt)
		if err != nil {
			return nil, err
		}
		return p, nil
	case KindDump:
		d, err := OpenDump(r.Dump)
		if err != nil {
			return nil, err
		}
		return d, nil
	}
	return nil, fmt.Errorf("attached VM %q: unknown kind %q", r.Name, r.Kind)
}

// Where says how the record reaches its VM, for listings.
func (r Record) Where() string {
	switch r.Kind {
	case KindQMP:
		return "qmp " + r.QMP
	case KindPID:
		return fmt.Sprintf("pid %d", r.PID)
	case KindLibvirt:
		return "libvirt " + r.Libvirt
	case KindDump:
		return "dump " + r.Dump
	}
	return string(r.Kind)
}

// Register saves r, refusing a name already attached. Two attaches of one name at once cannot
// both win: the record is written under a temporary name and linked into place, which fails if
// the name exists; a reader never sees a half-written record.
func Register(runDir string, r Record) error {
	if err := r.Check(); err != nil {
		return err
	}
	path := recordPath(runDir, r.Name)
	data, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("attach %s: %w", r.Name, err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+r.Name+".tmp-*")
	if err != nil {
		return fmt.Errorf("attach %s: %w", r.Name, err)
	}
	defer os.Remove(tmp.Name())
	_, err = tmp.Write(append(data, '\n'))
	if err = errors.Join(err, tmp.Sync(), tmp.Close()); err != nil {
		return fmt.Errorf("attach %s: write record: %w", r.Name, err)
	}
	if err := os.Link(tmp.Name(), path); errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("%q is already attached (detach it first: hybridbridge guest detach %s)", r.Name, r.Name)
	} else if err != nil {
		return fmt.Errorf("attach %s: %w", r.Name, err)
	}
	return nil
}

// Lookup returns the record of an attached target.
func Lookup(runDir, name string) (Record, error) {
	var r Record
	data, err := os.ReadFile(recordPath(runDir, name))
	if errors.Is(err, fs.ErrNotExist) {
		return r, fmt.Errorf("%w: %q", ErrNotAttached, name)
	}
	if err != nil {
		return r, err
	}
	if err := json.Unmarshal(data, &r); err != nil {
		return r, fmt.Errorf("attached VM %q: corrupt record %s: %w", name, recordPath(runDir, name), err)
	}
	if r.Name != name {
		return r, fmt.Errorf("attached VM %q: record %s names %q", name, recordPath(runDir, name), r.Name)
	}
	return r, r.Check()
}

// Records lists the attached targets by name.
func Records(runDir string) ([]Record, error) {
	ents, err := os.ReadDir(filepath.Join(runDir, "attached"))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []Record
	for _, e := range ents {
		name, ok := strings.CutSuffix(e.Name(), ".json")
		if !ok || !validName.MatchString(name) {
			continue // atomicfile's temporary files, or foreign files
		}
		r, err := Lookup(runDir, name)
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// Unregister forgets an attached target. The VM itself is not touched.
func Unregister(runDir, name string) error {
	err := os.Remove(recordPath(runDir, name))
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%w: %q", ErrNotAttached, name)
	}
	return err
}
