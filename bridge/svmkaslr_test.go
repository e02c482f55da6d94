package bridge

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	"hybridbridge/internal/plainvm"
	"hybridbridge/kaslr"
	"hybridbridge/memo"
	"hybridbridge/svm"
	"hybridbridge/target"
	"hybridbridge/vmm"
)

// TestSVMTakesOnKASLRGuestLayout builds an SVM snapshot for the layout of a real KASLR guest and
// finds the same layout in it: from outside (the snapshot's RAM read as the guest's is), from
// the bridge's view of the SVM, and from inside (the SVM's own /proc/kcore, read by injected
// calls, which also shows the relocated kernel runs under Unicorn).
func TestSVMTakesOnKASLRGuestLayout(t *testing.T) {
	if setupErr != nil {
		t.Fatalf("setup: %v", setupErr)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	want, ls, lsyms := kaslrVM.layoutSnapshot(t, ctx)
	t.Logf("guest: %s", want)
	vm := kaslrVM.get(t)
	tg, err := target.OpenQMP(ctx, vm.QMPSocket)
	if err != nil {
		t.Fatal(err)
	}
	defer tg.Close()
	du, _ := exec.Command("du", "-sh", ls.Dir()).Output()
	t.Logf("snapshot build: nokaslr %.1fs, with the guest's layout %.1fs; the layout snapshot takes %s on disk (%d MiB of data)",
		refSnap.BuildTimeS, ls.BuildTimeS, strings.Fields(string(du) + " ?")[0], ls.RAMData>>20)
	if ls.KASLR == nil || *ls.KASLR != want || ls.Layout.KernelStart != want.TextPhys {
		t.Errorf("snapshot records layout %v, kernel at %#x; want %s", ls.KASLR, ls.Layout.KernelStart, want)
	}
	if got, ref := ls.Symbols["_text"], refSnap.Symbols["_text"]; got != ref+uint64(want.TextOffset) {
		t.Errorf("snapshot _text %#x, want the nokaslr %#x moved by %+#x", got, ref, want.TextOffset)
	}
	if strings.Contains(ls.Append, "nokaslr") {
		t.Errorf("the SVM's command line still has nokaslr: %q", ls.Append)
	}

	// From outside: the snapshot's RAM, read as the bridge reads a guest's.
	if a, _ := lsyms.Addr("do_syscall_64"); a != ls.Symbols["do_syscall_64"] {
		t.Errorf("KernelSymbols do_syscall_64 %#x, the snapshot's %#x", a, ls.Symbols["do_syscall_64"])
	}
	mem, err := vmm.OpenFileView(ls.RAMPath(), ls.Layout.SnapshotRanges())
	if err != nil {
		t.Fatal(err)
	}
	defer mem.Close()
	got, err := kaslr.ReadLayout(mem, lsyms, refSnap.Symbols["_text"], ls.Layout.KernelStart)
	if err != nil {
		t.Fatal(err)
	}
	if got != want {
		t.Errorf("the snapshot's RAM:\n  %s\nthe guest's:\n  %s", got, want)
	}
	if mine, err := svmLayout(ls); err != nil || mine != want {
		t.Errorf("the bridge's view of the SVM: %s, %v; want %s", mine, err, want)
	}

	// From inside: the relocated kernel runs under Unicorn and describes its own memory.
	m, err := svm.Open(ls, svm.Options{Symbols: lsyms, Blocking: BlockingEntries()})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	version, err := m.ReadFile("/proc/version")
	if err != nil {
		t.Fatal(err)
	}
	if v := strings.TrimSpace(string(version)); v != ls.Banner {
		t.Errorf("/proc/version = %q, the boot banner %q", v, ls.Banner)
	}
	fd, err := m.Open("/proc/kcore", 0)
	if err != nil {
		t.Fatal(err)
	}
	headers, err := m.Read(fd, 65536)
	if err != nil {
		t.Fatal(err)
	}
	inside, err := kcoreLayout(headers, refSnap.Symbols["_text"])
	if err != nil {
		t.Fatal(err)
	}
	if inside != want {
		t.Errorf("the SVM's /proc/kcore:\n  %s\nthe guest's:\n  %s", inside, want)
	}
	t.Logf("SVM: %s (Unicorn: %d calls)", inside, m.Stats().Syscalls)

	// Attached with the snapshot in its layout, the KASLR guest's views equal its own files and
	// tools, as a nokaslr guest's do with the nokaslr snapshot.
	queueSocketsIn(t, ctx, vm)
	wantViews, wantLog, self := viewTruth(t, ctx, vm)
	tools := runToolsIn(t, ctx, vm)
	wantViews.toolsAfter = true
	views, s, err := readAttachedWith(ctx, tg, ls, lsyms, self, Options{Mode: ModeAuto})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("KASLR guest: attached and read every view; %d Fast-Bridge operations, %d fall-backs", s.Stats().FastOps, s.Stats().FallBacks)
	if st, err := tg.State(ctx); err != nil || st != target.Running {
		t.Errorf("the VM is %s (%v) after the session", st, err)
	}
	compareViews(t, views.views, wantViews, views.log, wantLog)
	compareWithTools(t, views.oracle, tools)
}

// TestOneMemoServesEveryLayout: a memo trained on one KASLR boot serves the same boot again,
// another boot of the build in another layout, and a nokaslr boot: every view equals the boot's
// files and tools, and nothing the memo learned on the first boot falls back on another. The
// memo keeps the build's link addresses and linked instruction bytes, whatever layout it learned
// in: its bytes are the nokaslr SVM's.
//
// A later boot may still fall back where the first taught nothing: a code path no view took there
// (an instruction not in the memo), an object at a place in the memory both kernels keep (the
// image pages each freed) that the memo has not seen, or a global reached both by constant
// address and through a guest-derived index where the lists keep it the SVM's. Those are logged.
func TestOneMemoServesEveryLayout(t *testing.T) {
	if setupErr != nil {
		t.Fatalf("setup: %v", setupErr)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	la, sa, ya := kaslrVM.layoutSnapshot(t, ctx)
	lb, sb, yb := kaslrVM2.layoutSnapshot(t, ctx)
	t.Logf("boot A: %s\nboot B: %s", la, lb)
	if la == lb {
		t.Fatalf("two boots chose the same layout (%s): the test proves nothing", la)
	}
	if MemoKey(sa) != MemoKey(sb) || MemoKey(sa) != MemoKey(refSnap) {
		t.Errorf("one build, three memo keys: %v, %v, %v", MemoKey(refSnap), MemoKey(sa), MemoKey(sb))
	}
	m := memo.New(MemoKey(sa))

	tgA, err := target.OpenQMP(ctx, kaslrVM.get(t).QMPSocket)
	if err != nil {
		t.Fatal(err)
	}
	_, s, err := readAttachedWith(ctx, tgA, sa, ya, 0, Options{Mode: ModeAuto, Memo: m})
	tgA.Close() // QEMU serves one QMP client at a time
	if err != nil {
		t.Fatal(err)
	}
	trained := s.Stats()
	if trained.FallBacks == 0 {
		t.Fatal("training boot A from an empty memo did not fall back: nothing was learned")
	}
	// By symbol and offset, which the boots' own symbols give whatever the memo's keys are.
	learned := map[string]bool{}
	for _, e := range m.Entries() {
		learned[refSyms.Format(e.PC)] = true
	}
	t.Logf("boot A, from an empty memo: %d fall-backs, %d instructions learned", trained.FallBacks, len(learned))

	serves := func(t *testing.T, vm *plainvm.VM, ls *svm.Snapshot, lsyms *vmm.Symbols) {
		queueSocketsIn(t, ctx, vm)
		want, wantLog, self := viewTruth(t, ctx, vm)
		tools := runToolsIn(t, ctx, vm)
		want.toolsAfter = true
		tg, err := target.OpenQMP(ctx, vm.QMPSocket)
		if err != nil {
			t.Fatal(err)
		}
		defer tg.Close()
		got, s, err := readAttachedWith(ctx, tg, ls, lsyms, self, Options{Mode: ModeAuto, Memo: m})
		if err != nil {
			t.Fatal(err)
		}
		st := s.Stats()
		why := map[string]int{}
		for _, ev := range st.Events {
			if ev.Reason == "instruction not in the memo" && learned[ev.Symbol] {
				t.Errorf("missed %s %q, learned on boot A: the memo did not find it in this layout", ev.Symbol, ev.Disassembly)
			}
			why[fmt.Sprintf("%s on %s: %s", ev.Symbol, ev.Region, ev.Reason)]++
		}
		t.Logf("%d Fast-Bridge operations, %d memo hits, %d fall-backs: %v", st.FastOps, st.Hits, st.FallBacks, why)
		compareViews(t, got.views, want, got.log, wantLog)
		compareWithTools(t, got.oracle, tools)
	}
	t.Run("the same boot", func(t *testing.T) { serves(t, kaslrVM.get(t), sa, ya) })
	t.Run("another layout", func(t *testing.T) { serves(t, kaslrVM2.get(t), sb, yb) })
	t.Run("nokaslr", func(t *testing.T) { serves(t, plain.get(t), refSnap, refSyms) })

	// The bytes learned in layout A are the build's: the nokaslr SVM's at the same address.
	mem, err := vmm.OpenFileView(refSnap.RAMPath(), refSnap.Layout.SnapshotRanges())
	if err != nil {
		t.Fatal(err)
	}
	defer mem.Close()
	text := refSnap.Symbols["_text"]
	checked, differ := 0, 0
	for _, e := range m.Entries() {
		if len(e.Bytes) == 0 || e.PC < text || e.PC >= refSnap.Symbols["_etext"] {
			continue
		}
		b := make([]byte, len(e.Bytes))
		if err := mem.ReadPhys(e.PC-text+refSnap.Layout.KernelStart, b); err != nil {
			t.Fatal(err)
		}
		checked++
		if !bytes.Equal(b, e.Bytes) {
			if differ++; differ <= 5 {
				t.Errorf("%s: memo bytes % x, the nokaslr SVM's % x", refSyms.Format(e.PC), e.Bytes, b)
			}
		}
	}
	if checked == 0 || differ > 0 {
		t.Errorf("%d of %d instructions learned in layout A differ from the build's", differ, checked)
	}
	t.Logf("%d instructions learned in layout A hold the build's linked bytes", checked)
}
