package bridge

import (
	"encoding/binary"
	"errors"
	"fmt"
	"testing"

	"hybridbridge/svm"
	"hybridbridge/vmm"
)

// TestModuleGrafts lists the module area's directory entries from synthetic guest tables: leaves
// and page-table pointers alike, nothing from the fixmap above or the image below.
func TestModuleGrafts(t *testing.T) {
	for _, levels := range []int{4, 5} {
		t.Run(fmt.Sprintf("%d-level", levels), func(t *testing.T) {
			mem := make([]byte, 1<<20)
			const root = 0x1000
			next := uint64(root)
			// set stores e as va's entry at level, creating the tables above it.
			set := func(va uint64, level int, e uint64) {
				table := uint64(root)
				for l := levels; l > level; l-- {
					at := table + (va>>(12+9*(l-1))&511)*8
					cur := binary.LittleEndian.Uint64(mem[at:])
					if cur&vmm.PTEPresent == 0 {
						next += 0x1000
						cur = next | vmm.PTEPresent | vmm.PTEWrite
						binary.LittleEndian.PutUint64(mem[at:], cur)
					}
					table = cur & vmm.PTEAddrMask
				}
				binary.LittleEndian.PutUint64(mem[table+(va>>(12+9*(level-1))&511)*8:], e)
			}
			walker := func() *vmm.Walker {
				view, err := vmm.NewBytesView("guest", mem, nil)
				if err != nil {
					t.Fatal(err)
				}
				w, err := vmm.NewWalker(view, root, levels)
				if err != nil {
					t.Fatal(err)
				}
				return w
			}

			if _, err := moduleGrafts(walker()); !errors.Is(err, vmm.ErrNotPresent) {
				t.Errorf("no tables: %v, want ErrNotPresent", err)
			}

			leaf := 0x200000 | vmm.PTEPresent | vmm.PTEPageSize
			table := 0x80000 | vmm.PTEPresent | vmm.PTEWrite
			set(modulesStart, 2, leaf)
			set(modulesStart+3*vmm.PageSize2M, 2, table)
			set(modulesStart+4*vmm.PageSize2M, 2, 0x400000|vmm.PTEPageSize) // not present
			set(modulesEnd, 2, leaf)                                        // the fixmap's
			set(modulesStart-vmm.PageSize2M, 2, leaf)                       // the kernel image's
			got, err := moduleGrafts(walker())
			if err != nil {
				t.Fatal(err)
			}
			want := []svm.Graft{
				{VA: modulesStart, Size: vmm.PageSize2M, Entry: leaf},
				{VA: modulesStart + 3*vmm.PageSize2M, Size: vmm.PageSize2M, Entry: table},
			}
			if fmt.Sprint(got) != fmt.Sprint(want) {
				t.Errorf("moduleGrafts = %+v, want %+v", got, want)
			}
		})
	}
}
