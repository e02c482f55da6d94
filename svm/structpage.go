package svm

import (
	"bytes"
	"errors"
	"fmt"

	"github.com/cilium/ebpf/btf"

	"hybridbridge/vmm"
)

// structPageSize reads sizeof(struct page) from the kernel's own type information (its BTF, at
// [__start_BTF, __stop_BTF) in the image) in the SVM's memory: the struct-page array holds one
// per page frame, so an address in it tells which frame it describes. 0 with a nil error when
// the kernel was built without BTF.
func structPageSize(mem vmm.PhysView, syms *vmm.Symbols, kernelStart uint64) (uint64, error) {
	start, ok1 := syms.Addr("__start_BTF")
	stop, ok2 := syms.Addr("__stop_BTF")
	text, ok3 := syms.Addr("_text")
	if !ok1 || !ok2 || !ok3 || stop <= start {
		return 0, nil
	}
	raw := make([]byte, stop-start)
	if err := mem.ReadPhys(start-text+kernelStart, raw); err != nil {
		return 0, fmt.Errorf("the kernel's BTF: %w", err)
	}
	spec, err := btf.LoadSpecFromReader(bytes.NewReader(raw))
	if err != nil {
		return 0, fmt.Errorf("the kernel's BTF: %w", err)
	}
	var page *btf.Struct
	if err := spec.TypeByName("page", &page); err != nil {
		if errors.Is(err, btf.ErrNotFound) {
			return 0, errors.New("the kernel's BTF has no struct page")
		}
		return 0, fmt.Errorf("the kernel's BTF: %w", err)
	}
	if page.Size < 32 || page.Size%8 != 0 {
		return 0, fmt.Errorf("the kernel's BTF gives struct page %d bytes", page.Size)
	}
	return uint64(page.Size), nil
}
