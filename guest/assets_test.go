package guest

import (
	"encoding/binary"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The setup header parser, on the kernel setup fetched and on files that are not bzImages: each is
// refused with ErrNotBzImage and a reason, never read as a release.
func TestKernelRelease(t *testing.T) {
	cache, err := FindCacheDir()
	if err != nil {
		t.Fatal(err)
	}
	vmlinuz, err := os.ReadFile(filepath.Join(cache, "kernel", "vmlinuz"))
	if err != nil {
		t.Fatal(err)
	}
	want, err := os.ReadFile(filepath.Join(cache, "kernel", "release"))
	if err != nil {
		t.Fatal(err)
	}
	elf, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	elfHead := make([]byte, 4096)
	if f, err := os.Open(elf); err != nil {
		t.Fatal(err)
	} else {
		f.Read(elfHead)
		f.Close()
	}
	// The version string's offset, and the end of the setup code it lies in.
	at := 0x200 + int(binary.LittleEndian.Uint16(vmlinuz[0x20e:]))
	setup := (int(vmlinuz[0x1f1]) + 1) * 512
	unterminated := append([]byte{}, vmlinuz[:setup]...)
	for i := at; i < len(unterminated); i++ {
		unterminated[i] = 'x'
	}
	noSig := append([]byte{}, vmlinuz[:setup]...)
	copy(noSig[0x202:], "HdrX")
	oldProto := append([]byte{}, vmlinuz[:setup]...)
	oldProto[0x206], oldProto[0x207] = 0x01, 0x01
	for _, c := range []struct {
		name    string
		data    []byte
		release string // "" means refused; then err names why
		err     string
	}{
		{"the setup's vmlinuz", vmlinuz, strings.TrimSpace(string(want)), ""},
		{"its setup code only", vmlinuz[:setup], strings.TrimSpace(string(want)), ""},
		{"empty", nil, "", "0 bytes, too short"},
		{"ELF", elfHead, "", "an ELF file"},
		{"truncated in the boot sector", vmlinuz[:0x100], "", "too short for a setup header"},
		{"truncated before its version", vmlinuz[:at-1], "", "outside the setup code"},
		{"version without an end", unterminated, "", "has no end"},
		{"no HdrS", noSig, "", `no "HdrS"`},
		{"boot protocol 1.01", oldProto, "", "older than 2.00"},
		{"zeros", make([]byte, 8192), "", `no "HdrS"`},
	} {
		path := filepath.Join(t.TempDir(), "kernel")
		if err := os.WriteFile(path, c.data, 0o644); err != nil {
			t.Fatal(err)
		}
		rel, err := KernelRelease(path)
		switch {
		case c.release != "" && (err != nil || rel != c.release):
			t.Errorf("%s: %q, %v; want %q", c.name, rel, err, c.release)
		case c.release == "" && (!errors.Is(err, ErrNotBzImage) || !strings.Contains(err.Error(), c.err) || !strings.Contains(err.Error(), path)):
			t.Errorf("%s: %q, %v; want ErrNotBzImage naming the file and %q", c.name, rel, err, c.err)
		}
	}
	if _, err := KernelRelease(filepath.Join(t.TempDir(), "none")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
}

// ForKernel keeps the setup's assets for its own kernel and swaps kernel and release for another
// file, whose id is its content's.
func TestAssetsForKernel(t *testing.T) {
	cache, err := FindCacheDir()
	if err != nil {
		t.Fatal(err)
	}
	a, err := LoadAssets(cache)
	if err != nil {
		t.Fatal(err)
	}
	if same, err := a.ForKernel(a.Kernel); err != nil || same != a {
		t.Errorf("ForKernel(the setup's kernel) = %+v, %v; want the setup's assets", same, err)
	}
	data, err := os.ReadFile(a.Kernel)
	if err != nil {
		t.Fatal(err)
	}
	other := filepath.Join(t.TempDir(), "bzImage")
	if err := os.WriteFile(other, data, 0o644); err != nil {
		t.Fatal(err)
	}
	b, err := a.ForKernel(other)
	if err != nil {
		t.Fatal(err)
	}
	if b.Kernel != other || b.Release != a.Release || b.Modules != "" || b.Busybox != a.Busybox || b.Agent != a.Agent || b.Helper != a.Helper {
		t.Errorf("ForKernel(%s) = %+v", other, b)
	}
	id1, err1 := a.KernelID()
	id2, err2 := b.KernelID()
	if err1 != nil || err2 != nil || id1 != id2 {
		t.Errorf("kernel ids %s %s (%v %v): the same bytes must be the same build", id1, id2, err1, err2)
	}
	if _, err := a.ForKernel(filepath.Join(t.TempDir(), "none")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("ForKernel of a missing file: %v", err)
	}
}
