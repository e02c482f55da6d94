package taint

import (
	"encoding/binary"
	"errors"
	"fmt"
	"testing"

	"hybridbridge/vmm"
)

// TestWalk checks the code-fetch translation against one 4 KiB page mapped by a chain of tables,
// one page each, starting at physical 0x1000.
func TestWalk(t *testing.T) {
	const va, frame = 0xffffffff81234567, 0x40000
	for _, levels := range []int{4, 5} {
		t.Run(fmt.Sprintf("%d-level", levels), func(t *testing.T) {
			mem := make([]byte, 0x10000)
			for l := levels; l >= 1; l-- {
				table := uint64(0x1000 * (levels - l + 1))
				next := table + 0x1000
				if l == 1 {
					next = frame
				}
				at := table + (va>>(12+9*(l-1))&511)*8
				binary.LittleEndian.PutUint64(mem[at:], next|vmm.PTEPresent)
			}
			read := func(addr uint64, buf []byte) error {
				if addr+uint64(len(buf)) > uint64(len(mem)) {
					return errors.New("outside memory")
				}
				copy(buf, mem[addr:])
				return nil
			}
			var cr4 uint64
			if levels == 5 {
				cr4 = vmm.CR4LA57
			}
			// CR3's low bits (a PCID here) are not part of the table's address.
			pa, err := walk(read, vmm.CR0PG, 0x1000|0x123, cr4, va)
			if err != nil || pa != frame|va&0xfff {
				t.Errorf("walk = %#x, %v; want %#x", pa, err, frame|va&0xfff)
			}
			if _, err := walk(read, vmm.CR0PG, 0x1000, cr4, va+0x1000); !errors.Is(err, vmm.ErrNotPresent) {
				t.Errorf("walk of an unmapped page: %v, want ErrNotPresent", err)
			}
			if pa, err := walk(read, 0, 0x1000, cr4, 0x1234); err != nil || pa != 0x1234 {
				t.Errorf("walk without paging = %#x, %v; want the address itself", pa, err)
			}
		})
	}
}
