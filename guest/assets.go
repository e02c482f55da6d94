package guest

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"hybridbridge/internal/atomicfile"
)

// ErrNotSetUp means scripts/setup.sh has not fetched what guests need.
var ErrNotSetUp = errors.New("hybridbridge is not set up: run scripts/setup.sh")

// Assets are the files every guest is built from, all fetched or built by scripts/setup.sh.
type Assets struct {
	CacheDir string // the project's .cache folder
	Kernel   string // vmlinuz of the guest kernel
	Release  string // its release, e.g. 6.1.0-56-amd64
	Modules  string // lib/modules/<release> of the kernel package
	Busybox  string // static busybox from the host
	Helper   string // cmd/hbguest, built static
	Agent    string // svm/agent/hbagent.c, built static: the secure VM's injection target
}

// FindCacheDir locates the .cache folder made by scripts/setup.sh: $HYBRIDBRIDGE_CACHE if set,
// otherwise the first .cache with a kernel in it found walking up from the executable's folder and
// then from the working directory (so both bin/hybridbridge and `go test` in a package find it).
func FindCacheDir() (string, error) {
	if dir := os.Getenv("HYBRIDBRIDGE_CACHE"); dir != "" {
		return dir, nil
	}
	var starts []string
	if exe, err := os.Executable(); err == nil {
		if exe, err = filepath.EvalSymlinks(exe); err == nil {
			starts = append(starts, filepath.Dir(exe))
		}
	}
	if wd, err := os.Getwd(); err == nil {
		starts = append(starts, wd)
	}
	for _, dir := range starts {
		for {
			candidate := filepath.Join(dir, ".cache")
			if _, err := os.Stat(filepath.Join(candidate, "kernel", "vmlinuz")); err == nil {
				return candidate, nil
			}
			parent := filepath.Dir(dir)
			if parent == dir {
				break
			}
			dir = parent
		}
	}
	return "", fmt.Errorf("%w (no .cache/kernel/vmlinuz found above the executable or the working directory; or set HYBRIDBRIDGE_CACHE)", ErrNotSetUp)
}

// LoadAssets checks that every asset exists and says which one is missing.
func LoadAssets(cacheDir string) (*Assets, error) {
	a := &Assets{
		CacheDir: cacheDir,
		Kernel:   filepath.Join(cacheDir, "kernel", "vmlinuz"),
		Modules:  filepath.Join(cacheDir, "kernel", "modules"),
		Busybox:  "/bin/busybox",
		Helper:   filepath.Join(cacheDir, "guest", "hbguest"),
		Agent:    filepath.Join(cacheDir, "guest", "hbagent"),
	}
	rel, err := os.ReadFile(filepath.Join(cacheDir, "kernel", "release"))
	if err != nil {
		return nil, fmt.Errorf("%w: guest kernel: %v", ErrNotSetUp, err)
	}
	a.Release = strings.TrimSpace(string(rel))
	for _, f := range []struct{ what, path string }{
		{"guest kernel", a.Kernel},
		{"kernel modules", a.Modules},
		{"static busybox (package busybox-static)", a.Busybox},
		{"guest helper", a.Helper},
		{"SVM agent", a.Agent},
	} {
		if _, err := os.Stat(f.path); err != nil {
			return nil, fmt.Errorf("%w: %s missing: %v", ErrNotSetUp, f.what, err)
		}
	}
	return a, nil
}

// ForKernel returns the assets with another build of the guest kernel, a bzImage: a VM someone
// else started runs its own build, and the SVM must boot that same build. Its release comes from
// the bzImage's own setup header. The setup's kernel modules belong to the setup's build, so the
// result has none (the SVM image needs none; the demo image cannot be built from it). The same
// file as the setup's kernel gives a itself.
func (a *Assets) ForKernel(bzImage string) (*Assets, error) {
	abs, err := filepath.Abs(bzImage)
	if err != nil {
		return nil, fmt.Errorf("kernel %s: %w", bzImage, err)
	}
	if same, err := sameFile(abs, a.Kernel); err != nil {
		return nil, err
	} else if same {
		return a, nil
	}
	rel, err := KernelRelease(abs)
	if err != nil {
		return nil, err
	}
	b := *a
	b.Kernel, b.Release, b.Modules = abs, rel, ""
	return &b, nil
}

// sameFile reports whether two paths name one file; a missing first path is an error naming it.
func sameFile(p, q string) (bool, error) {
	pi, err := os.Stat(p)
	if err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		return false, fmt.Errorf("kernel %s: %w", p, err)
	}
	qi, err := os.Stat(q)
	if err != nil {
		return false, nil
	}
	return os.SameFile(pi, qi), nil
}

// ErrNotBzImage means a file is not a Linux kernel in the x86 boot format (bzImage).
var ErrNotBzImage = errors.New("not a Linux bzImage")

// setupMax is the most a bzImage's setup code can take (setup_sects is one byte, plus the boot
// sector): its kernel_version string lies inside it.
const setupMax = (255 + 1) * 512

// KernelRelease reads the release (e.g. 6.1.0-57-amd64) from a bzImage's setup header: the
// first word of its kernel_version string.
func KernelRelease(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("kernel: %w", err)
	}
	defer f.Close()
	head := make([]byte, setupMax)
	n, err := io.ReadFull(f, head)
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		return "", fmt.Errorf("kernel %s: %w", path, err)
	}
	version, err := BzImageVersion(head[:n])
	if err != nil {
		return "", fmt.Errorf("kernel %s: %w", path, err)
	}
	return strings.Fields(version)[0], nil
}

// BzImageVersion returns the kernel_version string of a bzImage's setup header, given the file's
// beginning (see the kernel's Documentation/arch/x86/boot.rst): setup_sects at 0x1f1 (0 means
// 4), "HdrS" at 0x202, the boot protocol version at 0x206 (kernel_version exists from 2.00), and
// at 0x20e the string's offset from 0x200, inside the setup code.
func BzImageVersion(head []byte) (string, error) {
	switch {
	case len(head) >= 4 && string(head[:4]) == "\x7fELF":
		return "", fmt.Errorf("%w: an ELF file (a vmlinux? name the compressed bzImage, e.g. /boot/vmlinuz-*)", ErrNotBzImage)
	case len(head) < 0x210:
		return "", fmt.Errorf("%w: %d bytes, too short for a setup header", ErrNotBzImage, len(head))
	case string(head[0x202:0x206]) != "HdrS":
		return "", fmt.Errorf("%w: no \"HdrS\" setup header signature at 0x202", ErrNotBzImage)
	}
	if proto := binary.LittleEndian.Uint16(head[0x206:]); proto < 0x200 {
		return "", fmt.Errorf("%w: boot protocol %d.%02d is older than 2.00 and names no version", ErrNotBzImage, proto>>8, proto&0xff)
	}
	sects := int(head[0x1f1])
	if sects == 0 {
		sects = 4
	}
	if setup := (sects + 1) * 512; setup < len(head) {
		head = head[:setup]
	}
	off := 0x200 + int(binary.LittleEndian.Uint16(head[0x20e:]))
	if off <= 0x210 || off >= len(head) {
		return "", fmt.Errorf("%w: kernel_version at %#x is outside the setup code (%d bytes read)", ErrNotBzImage, off, len(head))
	}
	s := head[off:]
	end := bytes.IndexByte(s, 0)
	if end < 0 {
		return "", fmt.Errorf("%w: kernel_version at %#x has no end in the setup code", ErrNotBzImage, off)
	}
	version := string(s[:end])
	if strings.TrimSpace(version) == "" || strings.ContainsFunc(version, func(r rune) bool { return r < 0x20 || r > 0x7e }) {
		return "", fmt.Errorf("%w: kernel_version at %#x is not text", ErrNotBzImage, off)
	}
	return version, nil
}

// KernelID identifies the kernel build: the SHA-256 of vmlinuz, shortened. Caches that depend on
// the kernel (symbols, images) are keyed by it.
func (a *Assets) KernelID() (string, error) {
	return fileHash(a.Kernel)
}

func fileHash(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("hash %s: %w", path, err)
	}
	return hex.EncodeToString(h.Sum(nil))[:16], nil
}

// writeFileAtomic replaces path with data (creating its folder), so a crash or a concurrent reader
// never sees a half-written file under the final name.
func writeFileAtomic(path string, data []byte, perm os.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return atomicfile.WriteBytes(path, data, perm)
}
