package inspect

import (
	"encoding/json"
	"testing"
)

// Each view is a command of its name, so names are unique, and each has its one line of help.
func TestViewsNamedOnce(t *testing.T) {
	seen := map[string]bool{}
	for _, v := range Views {
		if v.Name == "" || seen[v.Name] || v.Short == "" {
			t.Errorf("view %q: empty, repeated or without help", v.Name)
		}
		seen[v.Name] = true
	}
}

// A process without open files is [] in JSON, as lsof --json has always printed it, not null.
func TestEmptyListIsEmptyJSON(t *testing.T) {
	recs, _, err := OpenFileView.Read(captured(t), 1)
	if err != nil {
		t.Fatal(err)
	}
	out, err := json.Marshal(recs)
	if err != nil || string(out) != "[]" {
		t.Errorf("lsof of a process without descriptors: %s, %v", out, err)
	}
}
