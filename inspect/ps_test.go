package inspect

import "testing"

func TestStatArgLen(t *testing.T) {
	stat := "175 (rlong) S 1 175 175 0 -1 4194304 108 0 0 0 0 0 0 0 20 0 1 0 217 2314240 11 18446744073709551615 4198400 5785993 140733894832832 0 0 0 0 6 65536 1 0 0 17 0 0 0 0 0 0 6141704 6178576 332410880 140733894840188 140733894881207 140733894881207 140733894881304 0\n"
	var p Process
	p.PID = 175
	if err := p.parseStat([]byte(stat)); err != nil {
		t.Fatal(err)
	}
	if p.argLen != 140733894881207-140733894840188 {
		t.Fatalf("argLen %d", p.argLen)
	}
	if err := p.checkCmdline(make([]byte, 4096)); err == nil {
		t.Fatal("a command line cut at a page boundary passed")
	}
	whole := make([]byte, p.argLen)
	if err := p.checkCmdline(whole); err != nil {
		t.Fatal(err)
	}
	holed := make([]byte, p.argLen)
	copy(holed, "/bin/sh\x00/tmp/x\x00")
	holed[len(holed)-2] = 'a'
	if err := p.checkCmdline(holed); err == nil {
		t.Fatal("a command line with a page of zeros in it passed")
	}
	title := append([]byte("nginx: worker"), 0)
	if err := p.checkCmdline(title); err != nil {
		t.Fatalf("a shorter NUL-terminated title (setproctitle): %v", err)
	}
}
