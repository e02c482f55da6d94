package bridge

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"hybridbridge/kaslr"
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
	vm := kaslrVM.get(t)
	tg, err := target.OpenQMP(ctx, vm.QMPSocket)
	if err != nil {
		t.Fatal(err)
	}
	defer tg.Close()
	want, err := GuestLayout(tg, snap, syms)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("guest: %s", want)
	if want.TextOffset == 0 {
		t.Fatalf("the guest's kernel was not moved (%s): the test proves nothing", want)
	}

	runDir, err := os.MkdirTemp("", "hbkaslr")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(runDir)
	out := filepath.Join(runDir, "snapshot")
	ls, err := svm.Build(ctx, assets, svm.BuildOptions{
		CacheDir: assets.CacheDir, RunDir: runDir, OutDir: out, KeepSymbols: BlockingEntries(), Layout: &want,
	})
	if err != nil {
		t.Fatal(err)
	}
	du, _ := exec.Command("du", "-sh", out).Output()
	t.Logf("snapshot build: nokaslr %.1fs, with the guest's layout %.1fs; the layout snapshot takes %s on disk (%d MiB of data)",
		snap.BuildTimeS, ls.BuildTimeS, strings.Fields(string(du) + " ?")[0], ls.RAMData>>20)
	if ls.KASLR == nil || *ls.KASLR != want || ls.Layout.KernelStart != want.TextPhys {
		t.Errorf("snapshot records layout %v, kernel at %#x; want %s", ls.KASLR, ls.Layout.KernelStart, want)
	}
	if got, ref := ls.Symbols["_text"], snap.Symbols["_text"]; got != ref+uint64(want.TextOffset) {
		t.Errorf("snapshot _text %#x, want the nokaslr %#x moved by %+#x", got, ref, want.TextOffset)
	}
	if strings.Contains(ls.Append, "nokaslr") {
		t.Errorf("the SVM's command line still has nokaslr: %q", ls.Append)
	}

	// From outside: the snapshot's RAM, read as the bridge reads a guest's.
	lsyms, err := svm.KernelSymbols(assets.CacheDir, ls)
	if err != nil {
		t.Fatal(err)
	}
	if a, _ := lsyms.Addr("do_syscall_64"); a != ls.Symbols["do_syscall_64"] {
		t.Errorf("KernelSymbols do_syscall_64 %#x, the snapshot's %#x", a, ls.Symbols["do_syscall_64"])
	}
	mem, err := vmm.OpenFileView(ls.RAMPath(), vmm.PCRanges(ls.Layout.RAMSize))
	if err != nil {
		t.Fatal(err)
	}
	defer mem.Close()
	got, err := kaslr.ReadLayout(mem, lsyms, snap.Symbols["_text"], ls.Layout.KernelStart)
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
	inside, err := kcoreLayout(headers, snap.Symbols["_text"])
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
