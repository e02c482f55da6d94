package ui

import (
	"cmp"
	"slices"
	"strconv"
	"strings"

	"charm.land/lipgloss/v2"
	"github.com/charmbracelet/x/ansi"
)

// column describes one table column.
type column struct {
	title   string
	width   int  // minimum width; the last flexible column takes the rest of the line
	numeric bool // sorts by number, right-aligned
	flex    bool
}

// row is one record's cells plus the record's index in the pane's source slice, so details
// can show the record itself.
type row struct {
	cells []string
	index int
}

// table is a sortable, filterable, scrollable list of rows. It is a plain value owned by a pane;
// its methods never block.
type table struct {
	cols    []column
	all     []row // unfiltered, unsorted
	rows    []row // what is shown: filtered and sorted
	sortCol int
	desc    bool
	filter  string
	cursor  int // index into rows
	offset  int // first row shown
	height  int // rows shown, header excluded
	width   int
}

func newTable(cols []column, sortCol int) table {
	return table{cols: cols, sortCol: sortCol, height: 10, width: 80}
}

// setRows replaces the data, keeping sort, filter and (when possible) the selected record.
func (t *table) setRows(rows []row) {
	var keep []string
	if t.cursor < len(t.rows) {
		keep = t.rows[t.cursor].cells
	}
	t.all = rows
	t.apply()
	if keep != nil {
		for i, r := range t.rows {
			if len(r.cells) > 0 && r.cells[0] == keep[0] && strings.Join(r.cells, "\x00") == strings.Join(keep, "\x00") {
				t.cursor = i
				break
			}
		}
	}
	t.clamp()
}

func (t *table) setFilter(f string) {
	t.filter = f
	t.apply()
	t.clamp()
}

// cycleSort moves the sort to the next column; reverse flips the order.
func (t *table) cycleSort() {
	t.sortCol = (t.sortCol + 1) % len(t.cols)
	t.desc = false
	t.apply()
}

func (t *table) reverse() {
	t.desc = !t.desc
	t.apply()
}

// apply recomputes rows from all: a row matches the filter when any cell contains it, case
// insensitively.
func (t *table) apply() {
	f := strings.ToLower(t.filter)
	t.rows = t.rows[:0]
	for _, r := range t.all {
		if f == "" || slices.ContainsFunc(r.cells, func(c string) bool { return strings.Contains(strings.ToLower(c), f) }) {
			t.rows = append(t.rows, r)
		}
	}
	c := t.sortCol
	numeric := c < len(t.cols) && t.cols[c].numeric
	slices.SortStableFunc(t.rows, func(a, b row) int {
		var r int
		if numeric {
			r = cmpNumeric(cell(a, c), cell(b, c))
		} else {
			r = strings.Compare(cell(a, c), cell(b, c))
		}
		if t.desc {
			r = -r
		}
		return r
	})
}

func cell(r row, c int) string {
	if c < len(r.cells) {
		return r.cells[c]
	}
	return ""
}

// cmpNumeric orders numbers numerically and puts non-numbers ("-") after them.
func cmpNumeric(a, b string) int {
	x, errA := strconv.ParseFloat(a, 64)
	y, errB := strconv.ParseFloat(b, 64)
	switch {
	case errA == nil && errB == nil:
		return cmp.Compare(x, y)
	case errA == nil:
		return -1
	case errB == nil:
		return 1
	}
	return strings.Compare(a, b)
}

func (t *table) move(n int) {
	t.cursor += n
	t.clamp()
}

func (t *table) home() { t.cursor = 0; t.clamp() }
func (t *table) end()  { t.cursor = len(t.rows) - 1; t.clamp() }

// clamp keeps the cursor on a row and the cursor's row on screen.
func (t *table) clamp() {
	t.cursor = max(0, min(t.cursor, len(t.rows)-1))
	h := max(1, t.height)
	if t.cursor < t.offset {
		t.offset = t.cursor
	}
	if t.cursor >= t.offset+h {
		t.offset = t.cursor - h + 1
	}
	t.offset = max(0, min(t.offset, len(t.rows)-h))
}

// selected returns the selected row, or false when the table is empty.
func (t *table) selected() (row, bool) {
	if t.cursor < len(t.rows) {
		return t.rows[t.cursor], true
	}
	return row{}, false
}

// clickRow selects the row drawn at line y of the table's view (0 is the header line).
func (t *table) clickRow(y int) bool {
	i := t.offset + y - 1
	if y < 1 || i >= len(t.rows) {
		return false
	}
	t.cursor = i
	t.clamp()
	return true
}

// widths sizes the columns: each at least its minimum and as wide as its widest shown cell;
// the flexible column takes what remains of the line.
func (t *table) widths() []int {
	w := make([]int, len(t.cols))
	for i, c := range t.cols {
		w[i] = max(c.width, ansi.StringWidth(c.title)+1)
	}
	end := min(len(t.rows), t.offset+max(1, t.height))
	for _, r := range t.rows[t.offset:end] {
		for i := range t.cols {
			if !t.cols[i].flex {
				w[i] = max(w[i], ansi.StringWidth(cell(r, i)))
			}
		}
	}
	used := 0
	for i, c := range t.cols {
		if !c.flex {
			used += w[i] + 1
		}
	}
	for i, c := range t.cols {
		if c.flex {
			w[i] = max(c.width, t.width-used)
			break
		}
	}
	return w
}

// view draws the header and the visible rows, exactly height+1 lines of at most width cells.
func (t *table) view(s *Styles, focused bool) string {
	w := t.widths()
	var b strings.Builder
	line := func(cells func(i int) string, style lipgloss.Style) {
		var l strings.Builder
		for i, c := range t.cols {
			if i > 0 {
				l.WriteByte(' ')
			}
			v := ansi.Truncate(cells(i), w[i], "…")
			pad := strings.Repeat(" ", max(0, w[i]-ansi.StringWidth(v)))
			if c.numeric {
				l.WriteString(pad + v)
			} else {
				l.WriteString(v + pad)
			}
		}
		out := ansi.Truncate(l.String(), t.width, "")
		out += strings.Repeat(" ", max(0, t.width-ansi.StringWidth(out)))
		b.WriteString(style.Render(out))
	}
	line(func(i int) string {
		title := t.cols[i].title
		if i == t.sortCol {
			if t.desc {
				title += "▼"
			} else {
				title += "▲"
			}
		}
		return title
	}, s.TableHeader)
	for k := 0; k < max(1, t.height); k++ {
		b.WriteByte('\n')
		i := t.offset + k
		if i >= len(t.rows) {
			if k == 0 && len(t.rows) == 0 {
				msg := "(no rows)"
				if t.filter != "" && len(t.all) > 0 {
					msg = "(no rows match the filter)"
				}
				b.WriteString(s.Dim.Render(msg))
			}
			continue
		}
		r := t.rows[i]
		style := s.Row
		if i == t.cursor && focused {
			style = s.Selected
		}
		line(func(c int) string { return cell(r, c) }, style)
	}
	return b.String()
}
