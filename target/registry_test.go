package target

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// Records round-trip; names are unique, also when two registrations race; a record names one way
// to reach its VM; Unregister forgets only the record.
func TestRegistry(t *testing.T) {
	dir := t.TempDir()
	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	dump := Record{Name: "d1", Kind: KindDump, Dump: "/x/vm.elf", Kernel: "/x/bzImage", AttachedAt: at}
	pid := Record{Name: "p1", Kind: KindPID, PID: 42, AttachedAt: at}
	for _, r := range []Record{pid, dump} {
		if err := Register(dir, r); err != nil {
			t.Fatalf("register %s: %v", r.Name, err)
		}
	}
	if got, err := Lookup(dir, "d1"); err != nil || got != dump {
		t.Errorf("lookup: %+v %v", got, err)
	}
	recs, err := Records(dir)
	if err != nil || len(recs) != 2 || recs[0] != dump || recs[1] != pid {
		t.Errorf("records: %+v %v", recs, err)
	}
	if err := Register(dir, Record{Name: "d1", Kind: KindQMP, QMP: "/s"}); err == nil || !strings.Contains(err.Error(), "already attached") {
		t.Errorf("second d1: %v", err)
	}

	// Of many registrations of one name at once, exactly one wins, and its record is whole.
	var wg sync.WaitGroup
	errs := make([]error, 16)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = Register(dir, Record{Name: "race", Kind: KindPID, PID: i + 1})
		}()
	}
	wg.Wait()
	won := 0
	for _, err := range errs {
		if err == nil {
			won++
		}
	}
	if r, err := Lookup(dir, "race"); won != 1 || err != nil || r.PID < 1 {
		t.Errorf("racing registrations: %d won, record %+v %v", won, r, err)
	}
	if ents, _ := os.ReadDir(filepath.Join(dir, "attached")); len(ents) != 3 {
		t.Errorf("left in the folder: %v", ents)
	}

	for _, c := range []struct {
		r    Record
		want string
	}{
		{Record{Name: "Bad", Kind: KindDump, Dump: "/d"}, `bad name "Bad"`},
		{Record{Name: "n", Kind: KindDump}, "name exactly one of --qmp, --pid, --libvirt or --dump (got 0)"},
		{Record{Name: "n", Kind: KindDump, Dump: "/d", QMP: "/s"}, "(got 2)"},
		{Record{Name: "n", Kind: KindPID}, "bad PID 0"},
		{Record{Name: "n", Kind: KindQMP, Dump: "/d"}, `kind "qmp" does not match its dump`},
	} {
		if err := Register(dir, c.r); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: %v, want %q", c.r, err, c.want)
		}
	}

	if err := Unregister(dir, "d1"); err != nil {
		t.Fatal(err)
	}
	if _, err := Lookup(dir, "d1"); !errors.Is(err, ErrNotAttached) {
		t.Errorf("lookup after unregister: %v", err)
	}
	if err := Unregister(dir, "d1"); !errors.Is(err, ErrNotAttached) {
		t.Errorf("second unregister: %v", err)
	}
	if recs, err := Records(t.TempDir()); err != nil || recs != nil {
		t.Errorf("records of an empty folder: %v %v", recs, err)
	}
}
