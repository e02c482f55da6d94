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
