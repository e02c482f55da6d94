package memo

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"hybridbridge/decision"
)

// open loads the memo at path as a CLI run or the console does.
func open(t *testing.T, path string) *Memo {
	t.Helper()
	m, err := LoadOrNew(path, testKey)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		t.Fatal(err)
	}
	return m
}

func save(t *testing.T, m *Memo, path string) SaveResult {
	t.Helper()
	res, err := m.Save(path)
	if err != nil {
		t.Fatal(err)
	}
	if res.Replaced != nil {
		t.Fatalf("a good memo file was replaced: %v", res.Replaced)
	}
	return res
}

func learn(t *testing.T, m *Memo, pc uint64, o Observation) {
	t.Helper()
	if _, err := m.Learn(pc, o); err != nil {
		t.Fatal(err)
	}
}

func loaded(t *testing.T, path string) *Memo {
	t.Helper()
	m, err := Load(path, testKey)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func peek(t *testing.T, m *Memo, pc uint64) Entry {
	t.Helper()
	e, ok := m.Peek(pc)
	if !ok {
		t.Fatalf("%#x not memoized", pc)
	}
	return e
}

// Two holders of one memo file learn different instructions and save in turn: the file, and each
// holder after its save, has both.
func TestSaveKeepsWhatOthersLearned(t *testing.T) {
	path := filepath.Join(t.TempDir(), "k.memo")
	a, b := open(t, path), open(t, path)
	learn(t, a, 0x10, obs(decision.Local, "stack"))
	learn(t, b, 0x20, obs(decision.Redirect, "init_pid_ns"))
	save(t, a, path)
	if res := save(t, b, path); res.Merged != 1 {
		t.Errorf("b merged %d instructions from the file, want 1", res.Merged)
	}
	if got := loaded(t, path); got.Len() != 2 {
		t.Fatalf("file holds %d entries, want 2", got.Len())
	}
	if _, ok := b.Peek(0x10); !ok {
		t.Error("b does not show what a learned after saving")
	}
	v := a.Version()
	save(t, a, path)
	if a.Len() != 2 || a.Version() == v {
		t.Errorf("a after saving again: %d entries, version %d -> %d", a.Len(), v, a.Version())
	}
	v = a.Version()
	save(t, a, path)
	if a.Version() != v {
		t.Error("version moved although nothing changed")
	}
}

// The same instruction learned with different decisions by two processes is merged by the memo's
// rule, never resolved to whichever saved last.
func TestSaveMergesConflictingDecisions(t *testing.T) {
	for _, tc := range []struct{ a, b, want decision.Decision }{
		{decision.Local, decision.Redirect, decision.Both},
		{decision.Redirect, decision.Local, decision.Both},
		{decision.Redirect, decision.Redirect, decision.Redirect},
		{decision.Local, decision.Unknown, decision.Unknown},
		{decision.Unknown, decision.Both, decision.Unknown},
		{decision.Both, decision.Local, decision.Both},
	} {
		t.Run(fmt.Sprintf("%v+%v", tc.a, tc.b), func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "k.memo")
			a, b := open(t, path), open(t, path)
			learn(t, a, 0x10, Observation{Decision: tc.a, Region: "jiffies", View: "ps", Syscall: "read", Time: t0.Add(time.Second)})
			learn(t, b, 0x10, Observation{Decision: tc.b, Region: "tk_core", View: "lsmod", Syscall: "openat", Bytes: []byte{0x90}, Time: t0})
			save(t, a, path)
			save(t, b, path)
			save(t, a, path) // a saving last changes nothing
			for name, m := range map[string]*Memo{"file": loaded(t, path), "a": a, "b": b} {
				e := peek(t, m, 0x10)
				if e.Decision != tc.want || e.Seen != 2 {
					t.Errorf("%s: %v seen %d, want %v seen 2", name, e.Decision, e.Seen, tc.want)
				}
				// b saw it first: its sighting describes the entry; the regions are united.
				if e.View != "lsmod" || e.Region != "tk_core" || !e.FirstSeen.Equal(t0) ||
					strings.Join(e.Regions, ",") != "jiffies,tk_core" || len(e.Bytes) != 1 {
					t.Errorf("%s: %+v", name, e)
				}
			}
		})
	}
}

// Saving again and again never counts twice: the file holds each holder's counts once, per entry
// and per view and syscall.
func TestSaveCountsOnce(t *testing.T) {
	path := filepath.Join(t.TempDir(), "k.memo")
	seed := New(testKey)
	learn(t, seed, 0x10, obs(decision.Redirect, "init_pid_ns"))
	save(t, seed, path)
	a, b := open(t, path), open(t, path)
	for i := range 5 {
		a.Lookup(0x10, "ps", "read")
		a.Lookup(0x99, "ps", "read") // a miss
		learn(t, a, 0x10, obs(decision.Redirect, "init_pid_ns"))
		for range 2 {
			b.Lookup(0x10, "lsmod", "read")
		}
		save(t, a, path)
		if i%2 == 0 {
			save(t, b, path)
		}
	}
	save(t, b, path)
	save(t, a, path)
	for name, m := range map[string]*Memo{"file": loaded(t, path), "a": a, "b": b} {
		e := peek(t, m, 0x10)
		if e.Seen != 6 || e.Hits != 15 || e.Misses != 0 {
			t.Errorf("%s: seen %d hits %d misses %d, want 6 15 0", name, e.Seen, e.Hits, e.Misses)
		}
		st := m.Stats()
		ps, lsmod := st.Views["ps"].Syscalls["read"], st.Views["lsmod"].Syscalls["read"]
		if ps.Lookups != 10 || ps.Hits != 5 || ps.Misses != 5 || lsmod.Lookups != 10 || lsmod.Hits != 10 {
			t.Errorf("%s: ps %+v, lsmod %+v", name, ps, lsmod)
		}
		// seed learned the entry, in its scope.
		if st.Total.Learned != 1 {
			t.Errorf("%s: learned %d, want 1", name, st.Total.Learned)
		}
	}
}

// A memo loaded from one file and saved to another adds all it holds to that file.
func TestSaveToAnotherFile(t *testing.T) {
	dir := t.TempDir()
	p1, p2 := filepath.Join(dir, "1.memo"), filepath.Join(dir, "2.memo")
	save(t, sample(t, false), p1)
	other := New(testKey)
	learn(t, other, 0x10, obs(decision.Local, "stack"))
	save(t, other, p2)
	m := open(t, p1)
	save(t, m, p2)
	got := loaded(t, p2)
	if got.Len() != sample(t, false).Len()+1 {
		t.Fatalf("%d entries, want %d", got.Len(), sample(t, false).Len()+1)
	}
	if e := peek(t, got, 0xffffffff81234567); e.Seen != 2 || e.Hits != 1 {
		t.Errorf("entry counts %+v", e)
	}
}

// `memo clear` (Remove) while a holder is running: the holder's next save does not bring back what
// it had not seen again; what it learned since is kept, with only the new counts.
func TestSaveAfterRemove(t *testing.T) {
	path := filepath.Join(t.TempDir(), "k.memo")
	seed := New(testKey)
	learn(t, seed, 0x10, obs(decision.Local, "stack"))
	learn(t, seed, 0x20, obs(decision.Local, "stack"))
	save(t, seed, path)
	a := open(t, path)
	a.Lookup(0x10, "ps", "read")
	learn(t, a, 0x20, obs(decision.Redirect, "init_pid_ns"))
	if err := Remove(path); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("memo still there after Remove: %v", err)
	}
	res := save(t, a, path)
	if res.Removed != 1 {
		t.Errorf("removed %d, want 1", res.Removed)
	}
	got := loaded(t, path)
	if _, ok := got.Peek(0x10); ok || a.Len() != 1 {
		t.Errorf("an instruction cleared from the file came back (file %d entries, memo %d)", got.Len(), a.Len())
	}
	if e := peek(t, got, 0x20); e.Seen != 1 || e.Decision != decision.Both {
		t.Errorf("learned since the clear: %+v", e)
	}
	if err := Remove(filepath.Join(t.TempDir(), "none", "k.memo")); err != nil {
		t.Errorf("Remove of a memo that is not there: %v", err)
	}
}

// Delete forgets an instruction in the file too; Clear replaces the file's content.
func TestSaveAfterDeleteAndClear(t *testing.T) {
	path := filepath.Join(t.TempDir(), "k.memo")
	seed := New(testKey)
	learn(t, seed, 0x10, obs(decision.Local, "stack"))
	learn(t, seed, 0x20, obs(decision.Local, "stack"))
	save(t, seed, path)
	a, b := open(t, path), open(t, path)
	b.Delete(0x10)
	learn(t, b, 0x30, obs(decision.Local, "stack"))
	learn(t, a, 0x40, obs(decision.Local, "stack"))
	save(t, a, path)
	save(t, b, path)
	got := loaded(t, path)
	if _, ok := got.Peek(0x10); ok || got.Len() != 3 {
		t.Errorf("after Delete: file has %d entries (0x10 present: %v), want 0x20, 0x30, 0x40", got.Len(), ok)
	}
	b.Delete(0x20)
	learn(t, b, 0x20, obs(decision.Redirect, "jiffies"))
	save(t, b, path)
	if e := peek(t, loaded(t, path), 0x20); e.Decision != decision.Redirect || e.Seen != 1 {
		t.Errorf("learned again after Delete: %+v, want only the new sighting", e)
	}

	learn(t, a, 0x50, obs(decision.Local, "stack"))
	save(t, a, path)
	b.Clear()
	learn(t, b, 0x60, obs(decision.Local, "stack"))
	save(t, b, path)
	got = loaded(t, path)
	if got.Len() != 1 || got.Stats().Total.Learned != 1 {
		t.Errorf("after Clear the file holds %d entries, %+v", got.Len(), got.Stats().Total)
	}
	save(t, a, path) // a's old entries were in the file b cleared: they stay removed
	if got := loaded(t, path); got.Len() != 1 {
		t.Errorf("after Clear and another holder's save: %d entries", got.Len())
	}
}

// A file that cannot be merged with is replaced, and the save says so, unless LoadOrNew rejected
// that very content (and its caller reported it).
func TestSaveReportsReplacedFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "k.memo")
	good := sample(t, false).Marshal()
	corrupt := bytes.Clone(good)
	corrupt[len(corrupt)/2] ^= 0xff
	otherKey := New(Key{Kernel: "another", Policy: testKey.Policy})
	learn(t, otherKey, 1, obs(decision.Local, "stack"))

	write := func(b []byte) {
		t.Helper()
		if err := os.WriteFile(path, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	fresh := func() *Memo {
		m := New(testKey)
		learn(t, m, 0x10, obs(decision.Local, "stack"))
		return m
	}

	// Loaded fine, corrupted meanwhile: reported, and the memo is written with all its counts.
	write(good)
	m := open(t, path)
	m.Lookup(0xffffffff81234567, "ps", "getdents64")
	write(corrupt)
	res, err := m.Save(path)
	if err != nil || !is[*ChecksumError](res.Replaced) || !strings.Contains(res.Replaced.Error(), path) {
		t.Fatalf("corrupt file: %v, %v", res.Replaced, err)
	}
	if e := peek(t, loaded(t, path), 0xffffffff81234567); e.Hits != 2 || e.Seen != 2 {
		t.Errorf("counts after replacing: %+v", e)
	}

	// Another key meanwhile (another build's rules): reported.
	write(otherKey.Marshal())
	res, err = fresh().Save(path)
	if err != nil || !is[*KeyMismatchError](res.Replaced) {
		t.Fatalf("other key: %v, %v", res.Replaced, err)
	}

	// Rejected at load: already reported, replaced silently.
	write(corrupt)
	m, err = LoadOrNew(path, testKey)
	if !is[*ChecksumError](err) {
		t.Fatalf("LoadOrNew of a corrupt file: %v", err)
	}
	learn(t, m, 0x10, obs(decision.Local, "stack"))
	if res, err := m.Save(path); err != nil || res.Replaced != nil {
		t.Errorf("already reported: %v, %v", res.Replaced, err)
	}
	if loaded(t, path).Len() != 1 {
		t.Error("not replaced")
	}

	// Rejected at load, then something else unreadable: reported.
	write(corrupt)
	m, _ = LoadOrNew(path, testKey)
	write([]byte("HBMEMO\x00\ntruncated"))
	if res, err := m.Save(path); err != nil || !is[*SizeError](res.Replaced) {
		t.Errorf("changed after load: %v, %v", res.Replaced, err)
	}

	// Cleared: the user asked for the content to go.
	write(corrupt)
	m = fresh()
	m.Clear()
	if res, err := m.Save(path); err != nil || res.Replaced != nil {
		t.Errorf("after Clear: %v, %v", res.Replaced, err)
	}
}

// Goroutines of one process saving one file through separate memos exclude each other too.
func TestSaveConcurrentInProcess(t *testing.T) {
	path := filepath.Join(t.TempDir(), "k.memo")
	const workers, rounds = 4, 25
	var wg sync.WaitGroup
	for w := range workers {
		m := open(t, path)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range rounds {
				if _, err := m.Learn(uint64(w<<16|i), obs(decision.Local, "stack")); err != nil {
					t.Error(err)
					return
				}
				if _, err := m.Learn(0x42, obs(decision.Local, "stack")); err != nil {
					t.Error(err)
					return
				}
				if _, err := m.Save(path); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	got := loaded(t, path)
	if got.Len() != workers*rounds+1 {
		t.Errorf("%d entries, want %d", got.Len(), workers*rounds+1)
	}
	if e := peek(t, got, 0x42); e.Seen != workers*rounds {
		t.Errorf("shared entry seen %d, want %d", e.Seen, workers*rounds)
	}
}

// The two-process test: the test binary runs itself twice as TestHelperSaver. Both children load
// the (missing) memo, wait for each other, then each learns its own instructions and a shared one
// with its own decision, and saves after every step. Afterwards the file holds both sets, the
// shared instruction merged, every count exactly once. Were the last writer to win, the file would
// hold one child's set only, whatever the timing.
func TestTwoProcessesSaveConcurrently(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "k.memo")
	children := make([]*exec.Cmd, 2)
	outs := make([]strings.Builder, 2)
	for i := range children {
		cmd := exec.Command(os.Args[0], "-test.run=^TestHelperSaver$", "-test.count=1")
		cmd.Env = append(os.Environ(), helperEnv+"="+strings.Join([]string{strconv.Itoa(i), path, dir}, ","))
		cmd.Stdout, cmd.Stderr = &outs[i], &outs[i]
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		children[i] = cmd
	}
	for i, cmd := range children {
		if err := cmd.Wait(); err != nil {
			t.Fatalf("child %d: %v\n%s", i, err, outs[i].String())
		}
		if !strings.Contains(outs[i].String(), "saver done") {
			t.Fatalf("child %d did not run the helper:\n%s", i, outs[i].String())
		}
	}
	got := loaded(t, path)
	if got.Len() != 2*helperRounds+1 {
		t.Errorf("file holds %d entries, want %d", got.Len(), 2*helperRounds+1)
	}
	for i, d := range helperDecisions {
		for r := range helperRounds {
			e, ok := got.Peek(helperPC(i, r))
			if !ok {
				t.Errorf("child %d's instruction %d is missing", i, r)
				continue
			}
			if e.Decision != d || e.Seen != 1 || e.View != helperView(i) {
				t.Errorf("child %d's instruction %d: %+v", i, r, e)
			}
		}
	}
	if e := peek(t, got, helperShared); e.Decision != decision.Both || e.Seen != 2*helperRounds || e.Hits != 2*helperRounds {
		t.Errorf("shared instruction: %v seen %d hits %d, want both %d %d", e.Decision, e.Seen, e.Hits, 2*helperRounds, 2*helperRounds)
	}
	st := got.Stats()
	for i := range helperDecisions {
		v := st.Views[helperView(i)]
		if v.Lookups != helperRounds || v.Hits != helperRounds || v.Learned != helperRounds+1 {
			t.Errorf("view %s: %+v", helperView(i), v.Counters)
		}
	}
}

const (
	helperEnv    = "HBMEMO_TEST_SAVER"
	helperRounds = 40
	helperShared = 0xffffffff81000042
)

var helperDecisions = []decision.Decision{decision.Local, decision.Redirect}

func helperPC(child, round int) uint64 {
	return 0xffffffff82000000 + uint64(child)<<20 + uint64(round)*8
}
func helperView(child int) string { return fmt.Sprint("view", child) }

// TestHelperSaver is one child of TestTwoProcessesSaveConcurrently; it does nothing when run
// directly.
func TestHelperSaver(t *testing.T) {
	arg := os.Getenv(helperEnv)
	if arg == "" {
		return // only a child of TestTwoProcessesSaveConcurrently does the work
	}
	parts := strings.Split(arg, ",")
	child, err := strconv.Atoi(parts[0])
	if err != nil || len(parts) != 3 {
		t.Fatalf("bad %s=%q", helperEnv, arg)
	}
	path, dir := parts[1], parts[2]
	m := open(t, path)
	// Both hold the memo before either saves, as a console and a CLI view started together do.
	if err := os.WriteFile(filepath.Join(dir, fmt.Sprint("ready", child)), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	other := filepath.Join(dir, fmt.Sprint("ready", 1-child))
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(time.Millisecond) {
		if _, err := os.Stat(other); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the other child never started")
		}
	}
	view, d := helperView(child), helperDecisions[child]
	for r := range helperRounds {
		learn(t, m, helperPC(child, r), Observation{Decision: d, Region: "jiffies", View: view, Syscall: "read"})
		learn(t, m, helperShared, Observation{Decision: d, Region: "jiffies", View: view, Syscall: "read"})
		m.Lookup(helperShared, view, "read")
		save(t, m, path)
	}
	fmt.Println("saver done")
}
