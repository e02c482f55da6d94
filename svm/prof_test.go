package svm

import (
	"testing"
	"time"
)

func TestProfGetpid(t *testing.T) {
	m := open(t, Options{})
	for _, n := range []int{1, 10, 1000} {
		t0 := time.Now()
		for i := 0; i < n; i++ {
			if _, err := m.Syscall(SysGetpid); err != nil {
				t.Fatal(err)
			}
		}
		t.Logf("%d getpid: %v each", n, time.Since(t0)/time.Duration(n))
	}
	fd, _ := m.Open("/proc/1/stat", 0)
	t0 := time.Now()
	for i := 0; i < 100; i++ {
		m.Pread(fd, 4096, 0)
	}
	t.Logf("pread: %v each", time.Since(t0)/100)
}
