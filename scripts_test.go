package main

import (
	"bytes"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// The setup takes the Debian mirror from the machine's own apt configuration: whatever sources
// apt is given (one-line or deb822), debian-mirror.sh prints the main archive's site, never the
// security or updates suite, and fails with a message when there is none.
func TestDebianMirrorFromAptConfiguration(t *testing.T) {
	if _, err := exec.LookPath("apt-get"); err != nil {
		t.Fatalf("apt-get: %v (setup runs on Debian)", err)
	}
	for _, c := range []struct {
		name, list, deb822, want string
	}{
		{name: "one-line", list: "deb [signed-by=/k.gpg] http://security.mirror.test/debian-security bookworm-security main\n" +
			"deb http://mirror.test/debian/ bookworm main contrib\n", want: "http://mirror.test/debian"},
		{name: "deb822", deb822: "Types: deb\nURIs: http://mirror2.test/debian\nSuites: bookworm-updates bookworm\nComponents: main\n",
			want: "http://mirror2.test/debian"},
		{name: "none", list: "deb http://mirror.test/debian-security bookworm-security main\n"},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			parts := filepath.Join(dir, "sources.list.d")
			must(t, os.Mkdir(parts, 0o755))
			must(t, os.WriteFile(filepath.Join(dir, "sources.list"), []byte(c.list), 0o644))
			if c.deb822 != "" {
				must(t, os.WriteFile(filepath.Join(parts, "test.sources"), []byte(c.deb822), 0o644))
			}
			conf := filepath.Join(dir, "apt.conf")
			must(t, os.WriteFile(conf, []byte(`Dir::Etc::sourcelist "`+filepath.Join(dir, "sources.list")+`";
Dir::Etc::sourceparts "`+parts+`";
Dir::State "`+dir+`";
`), 0o644))
			cmd := exec.Command("scripts/debian-mirror.sh")
			cmd.Env = append(os.Environ(), "APT_CONFIG="+conf, "DEBIAN_CODENAME=bookworm")
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			out, err := cmd.Output()
			got := strings.TrimSpace(string(out))
			if c.want == "" {
				if err == nil || !strings.Contains(stderr.String(), "no source for Debian bookworm") {
					t.Fatalf("no main archive configured: printed %q, %v, stderr %q; want a failure saying so", got, err, stderr.String())
				}
				return
			}
			if err != nil || got != c.want {
				t.Fatalf("mirror %q (%v, stderr %q), want %q", got, err, stderr.String(), c.want)
			}
		})
	}
}

// registryHosts are the package registries' host names: the project reaches them through the
// machine's own configuration (apt's sources, Go's proxy setting), never by a name of its own.
var registryHosts = []string{"deb.debian.org", "security.debian.org", "ftp.debian.org", "snapshot.debian.org",
	"proxy.golang.org", "sum.golang.org", "registry.npmjs.org", "pypi.org"}

func TestNoRegistryHostNames(t *testing.T) {
	err := filepath.WalkDir(".", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if path != "." && (strings.HasPrefix(d.Name(), ".") && d.Name() != ".ci" || d.Name() == "bin") {
				return filepath.SkipDir
			}
			return nil
		}
		if path == "scripts_test.go" {
			return nil // the list above
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for _, h := range registryHosts {
			if bytes.Contains(data, []byte(h)) {
				t.Errorf("%s names the registry host %s", path, h)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
