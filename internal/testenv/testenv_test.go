package testenv

import "testing"

func TestCI(t *testing.T) {
	for v, want := range map[string]bool{"true": true, "1": true, "TRUE": true, "false": false, "0": false, "": false, "yes": false} {
		t.Setenv("CI", v)
		if got := CI(); got != want {
			t.Errorf("CI=%q: CI() = %v, want %v", v, got, want)
		}
	}
}

// TestSkip checks how each helper ends a test: Skip skips outside CI and fails under it;
// SkipNoKVM skips in both. A real failing subtest would fail this test too, so the helpers
// run against a TB that records the outcome.
func TestSkip(t *testing.T) {
	cases := []struct {
		ci       string
		skip     func(testing.TB, string)
		wantFail bool
	}{
		{"false", Skip, false},
		{"true", Skip, true},
		{"false", SkipNoKVM, false},
		{"true", SkipNoKVM, false},
	}
	for i, c := range cases {
		t.Setenv("CI", c.ci)
		tb := &fakeTB{}
		tb.run(func() { c.skip(tb, "no tmux") })
		if tb.failed != c.wantFail || tb.skipped == c.wantFail {
			t.Errorf("case %d (CI=%s): failed %v, skipped %v; want failed %v", i, c.ci, tb.failed, tb.skipped, c.wantFail)
		}
	}
}

// fakeTB records how a helper ended the test. Where testing.T would stop the test's goroutine,
// it panics with stop, which run recovers.
type fakeTB struct {
	testing.TB
	failed, skipped bool
}

type stop struct{}

func (f *fakeTB) run(fn func()) {
	defer func() {
		if r := recover(); r != nil {
			if _, ok := r.(stop); !ok {
				panic(r)
			}
		}
	}()
	fn()
}

func (f *fakeTB) Helper()               {}
func (f *fakeTB) Fatalf(string, ...any) { f.failed = true; panic(stop{}) }
func (f *fakeTB) Skip(...any)           { f.skipped = true; panic(stop{}) }
