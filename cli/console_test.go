package cli

import (
	"strings"
	"testing"
)

func TestConsoleNeedsATerminal(t *testing.T) {
	_, _, err := run("console")
	if err == nil || !strings.Contains(err.Error(), "needs a terminal") || !strings.Contains(err.Error(), "hybridbridge ps") {
		t.Fatalf("console without a terminal: %v", err)
	}
	if _, _, err := run("console", "--mode", "turbo"); err == nil || !strings.Contains(err.Error(), "auto, fast or slow") {
		t.Errorf("bad --mode: %v", err)
	}
}
