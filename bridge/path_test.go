package bridge

import "testing"

func TestProcPath(t *testing.T) {
	for in, want := range map[string]string{
		"/proc":              "/hbproc",
		"/proc/1/stat":       "/hbproc/1/stat",
		"/proc/net/tcp":      "/hbproc/1/net/tcp",
		"/proc/mounts":       "/hbproc/1/mounts",
		"/proc/self/environ": "/hbproc/1/environ",
		"/proc/thread-self":  "/hbproc/1",
		"/proc/network":      "/hbproc/network",
		"/procfoo":           "/procfoo",
		"/sys/kernel":        "/sys/kernel",
	} {
		if got := procPath(in); got != want {
			t.Errorf("procPath(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestProgramPath: a program's paths under /proc walk the views' procfs as the views read it;
// anything else is left to the kernel (""), which svm.Machine.RunProgram hands it already clean.
func TestProgramPath(t *testing.T) {
	for in, want := range map[string]string{
		"/proc":            "/hbproc",
		"/proc/":           "/hbproc",
		"/proc/self":       "/hbproc/1",
		"/proc/self/fd/3":  "/hbproc/1/fd/3",
		"/proc/net/tcp6":   "/hbproc/1/net/tcp6",
		"/proc/123/status": "/hbproc/123/status",
		"/proc/sys/kernel": "/hbproc/sys/kernel",
		"/procfs":          "",
		"/etc/passwd":      "",
		"/":                "",
	} {
		if got := programPath(in); got != want {
			t.Errorf("programPath(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestListsDisjoint: a global in two lists would be decided by whichever is checked first.
func TestListsDisjoint(t *testing.T) {
	for n := range redirectList {
		if _, ok := keepLocalList[n]; ok {
			t.Errorf("%s is in the redirect and the keep-local list", n)
		}
		if _, ok := redirectInList[n]; ok {
			t.Errorf("%s is in the redirect and the scoped list", n)
		}
	}
	for n := range redirectInList {
		if _, ok := keepLocalList[n]; ok {
			t.Errorf("%s is in the scoped and the keep-local list", n)
		}
	}
	// Reached by constant address such a global is the SVM's, as it is through guest pointers in
	// the functions that list names.
	for n := range sameInBoth {
		if _, ok := keepLocalList[n]; !ok {
			t.Errorf("%s is the same in both kernels but not in the keep-local list", n)
		}
	}
}
