package bridge

import (
	"bytes"
	"debug/elf"
	"encoding/base64"
	"errors"
	"fmt"
	"testing"

	"hybridbridge/kaslr"
	"hybridbridge/target"
)

// startKernelMap is __START_KERNEL_map: the kernel image's virtual mapping starts there, at
// physical phys_base.
const startKernelMap = 0xffffffff80000000

// kcoreLayout is the layout as the guest's own kernel describes its memory in /proc/kcore's
// program headers (fs/proc/kcore.c): the text entry's virtual and physical address are _text's;
// a RAM entry's virtual address is page_offset_base plus its physical one; the vmalloc entry
// starts at vmalloc_base; the struct pages of the first RAM range are at vmemmap_base (aligned
// to 1 GiB by the randomisation).
func kcoreLayout(headers []byte, ref uint64) (kaslr.Layout, error) {
	f, err := elf.NewFile(bytes.NewReader(headers))
	if err != nil {
		return kaslr.Layout{}, fmt.Errorf("/proc/kcore headers: %w", err)
	}
	var l kaslr.Layout
	vmemmap := ^uint64(0)
	for _, p := range f.Progs {
		if p.Type != elf.PT_LOAD {
			continue
		}
		noPhys := p.Paddr == ^uint64(0)
		switch {
		case !noPhys && p.Vaddr >= startKernelMap && l.TextPhys == 0:
			l.TextPhys, l.TextOffset = p.Paddr, int64(p.Vaddr)-int64(ref)
		case !noPhys && p.Vaddr < startKernelMap && l.PageOffsetBase == 0:
			l.PageOffsetBase = p.Vaddr - p.Paddr
		case noPhys && p.Memsz >= 1<<40:
			l.VmallocBase = p.Vaddr
		case noPhys && p.Vaddr < startKernelMap:
			vmemmap = min(vmemmap, p.Vaddr)
		}
	}
	l.VmemmapBase = vmemmap &^ (1<<30 - 1)
	if l.TextPhys == 0 || l.PageOffsetBase == 0 || l.VmallocBase == 0 || vmemmap == ^uint64(0) {
		return l, fmt.Errorf("/proc/kcore headers lack an entry: %+v", l)
	}
	return l, nil
}

// TestGuestLayoutOfKASLRGuest: the layout found from outside (the image by its banner, its data
// where the build puts it) is the one the guest's own /proc/kcore describes; attaching is refused
// naming it, and the VM runs on.
func TestGuestLayoutOfKASLRGuest(t *testing.T) {
	ctx := need(t)
	vm := kaslrVM.get(t)
	res := mustExec(t, ctx, vm, "kcore headers", "head -c 65536 /proc/kcore | base64")
	headers, err := base64.StdEncoding.DecodeString(string(bytes.Join(bytes.Fields(res.Stdout), nil)))
	if err != nil {
		t.Fatalf("kcore headers: %v", err)
	}
	want, err := kcoreLayout(headers, refSnap.Symbols["_text"])
	if err != nil {
		t.Fatal(err)
	}
	tg, err := target.OpenQMP(ctx, vm.QMPSocket)
	if err != nil {
		t.Fatal(err)
	}
	defer tg.Close()
	got, err := GuestLayout(tg, refSnap, refSyms)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("guest: %s", got)
	if got != want {
		t.Errorf("layout from outside:\n  %s\nthe guest's /proc/kcore:\n  %s", got, want)
	}
	mine, err := svmLayout(refSnap)
	if err != nil {
		t.Fatal(err)
	}
	if got == mine {
		t.Fatalf("the KASLR guest has the SVM's nokaslr layout (%s): the test proves nothing", mine)
	}
	_, err = AttachTarget(ctx, tg, refSnap, refSyms, Options{Mode: ModeSlow})
	if !errors.Is(err, ErrLayoutMismatch) {
		t.Fatalf("attach a KASLR guest: %v, want ErrLayoutMismatch", err)
	}
	t.Logf("refused: %v", err)
	if st, err := tg.State(ctx); err != nil || st != target.Running {
		t.Errorf("the VM is %s (%v) after the refused attach", st, err)
	}
}
