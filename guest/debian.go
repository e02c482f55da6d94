package guest

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// DebianArgs is the Debian guest's kernel command line: a distribution's own (root disk, serial
// console), with none of the demo's restrictions, and KASLR on.
const DebianArgs = "root=/dev/vda ro console=ttyS0 panic=-1"

// ErrNoDebianImage means scripts/setup.sh has not built the Debian guest.
var ErrNoDebianImage = errors.New("the Debian guest image is not built: run scripts/setup.sh")

// DebianImage is the Debian 12 guest scripts/debian-image.sh builds: systemd, sshd, cron, a user
// analyst, a small server's workload and the command channel (a systemd service), on an ext4 root
// disk, booted with the image's own kernel and initramfs on q35 with 2 vCPUs and 4 GiB. Its kernel
// must be the SVM's build.
func DebianImage(a *Assets) (*Image, error) {
	dir := filepath.Join(a.CacheDir, "debian")
	img := &Image{
		Path:    filepath.Join(dir, "initrd.img"),
		Kernel:  filepath.Join(dir, "vmlinuz"),
		Append:  DebianArgs,
		Disk:    filepath.Join(dir, "root.img"),
		Machine: "q35",
		CPUs:    2,
		MemMiB:  4096,
	}
	for _, f := range []string{img.Path, img.Kernel, img.Disk} {
		if _, err := os.Stat(f); err != nil {
			return nil, fmt.Errorf("%w (%v)", ErrNoDebianImage, err)
		}
	}
	own, err := fileHash(img.Kernel)
	if err != nil {
		return nil, err
	}
	svm, err := a.KernelID()
	if err != nil {
		return nil, err
	}
	if own != svm {
		return nil, fmt.Errorf("the Debian image's kernel (%s) is not the guest kernel %s: run scripts/setup.sh to rebuild the image", img.Kernel, a.Release)
	}
	return img, nil
}
