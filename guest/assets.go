package guest

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
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
