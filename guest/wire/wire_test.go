package wire

import (
	"bytes"
	"strings"
	"testing"
)

func TestCommandRoundTrip(t *testing.T) {
	for _, cmd := range []string{"", "echo hi", "printf 'a\nb' | cat", strings.Repeat("x", 5000), "\x00\xff"} {
		line := FormatCommand(42, cmd)
		if !strings.HasSuffix(line, "\n") || strings.Count(line, "\n") != 1 {
			t.Fatalf("request for %q is not one line: %q", cmd, line)
		}
		id, got, ok := ParseCommand(strings.TrimSuffix(line, "\n"))
		if !ok || id != 42 || got != cmd {
			t.Fatalf("round trip of %q: %d %q %v", cmd, id, got, ok)
		}
	}
	for _, bad := range []string{"", "@@HB-CMD", "@@HB-CMD x aGk=", "@@HB-CMD 1 !!!", "garbage @@HB-CMD 1 aGk="} {
		if _, _, ok := ParseCommand(bad); ok {
			t.Errorf("accepted %q", bad)
		}
	}
}

func parseAll(t *testing.T, text string) ([]*Reply, []error) {
	t.Helper()
	var p ReplyParser
	var reps []*Reply
	var errs []error
	for _, l := range strings.Split(strings.TrimSuffix(text, "\n"), "\n") {
		r, err := p.Line(l)
		if err != nil {
			errs = append(errs, err)
		}
		if r != nil {
			reps = append(reps, r)
		}
	}
	return reps, errs
}

func TestReplyRoundTrip(t *testing.T) {
	stdout := bytes.Repeat([]byte("0123456789\n\x00\r"), 1000)
	var buf bytes.Buffer
	if err := WriteReply(&buf, 7, stdout, []byte("warn\n"), 130); err != nil {
		t.Fatal(err)
	}
	if err := WriteReply(&buf, 8, nil, nil, 0); err != nil {
		t.Fatal(err)
	}
	// Noise before and between replies (a kernel message, line noise) is ignored.
	text := "junk\r\n" + buf.String()
	reps, errs := parseAll(t, text)
	if len(errs) != 0 || len(reps) != 2 {
		t.Fatalf("replies %d errors %v", len(reps), errs)
	}
	if reps[0].ID != 7 || !bytes.Equal(reps[0].Stdout, stdout) || string(reps[0].Stderr) != "warn\n" || reps[0].Status != 130 {
		t.Fatalf("reply 7 wrong: id %d status %d stderr %q stdout %d bytes", reps[0].ID, reps[0].Status, reps[0].Stderr, len(reps[0].Stdout))
	}
	if reps[1].ID != 8 || len(reps[1].Stdout) != 0 || reps[1].Status != 0 {
		t.Fatalf("reply 8 wrong: %+v", reps[1])
	}
}

func TestReplyGarbledIsDropped(t *testing.T) {
	var buf bytes.Buffer
	WriteReply(&buf, 1, []byte("hello"), nil, 0)
	good := buf.String()
	cases := map[string]string{
		"corrupt payload":   strings.Replace(good, "O aGVsbG8=", "O a#VsbG8=", 1),
		"unknown line":      strings.Replace(good, "O aGVsbG8=", "X aGVsbG8=", 1),
		"end of other id":   strings.Replace(good, "@@HB-END 1 0", "@@HB-END 2 0", 1),
		"interrupted begin": strings.Replace(good, "O aGVsbG8=", "@@HB-BEGIN 3", 1),
	}
	for name, text := range cases {
		reps, _ := parseAll(t, text)
		for _, r := range reps {
			if r.ID == 1 {
				t.Errorf("%s: reply 1 accepted: %+v", name, r)
			}
		}
	}
}
