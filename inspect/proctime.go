package inspect

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// userHZ is the unit of the clock ticks in /proc files (USER_HZ, 100 on every architecture's
// user ABI that procps supports).
const userHZ = 100

// ReadBootTime reads the guest's boot time (the btime line of /proc/stat).
func ReadBootTime(f Files) (time.Time, error) {
	data, err := f.ReadFile("/proc/stat")
	if err != nil {
		return time.Time{}, fmt.Errorf("read /proc/stat: %w", err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "btime "); ok {
			sec, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			if err != nil || sec <= 0 {
				return time.Time{}, fmt.Errorf("/proc/stat: btime %q", v)
			}
			return time.Unix(sec, 0).UTC(), nil
		}
	}
	return time.Time{}, errors.New("/proc/stat: no btime line")
}

// listProcessesView is the ps view: the processes with their start times and user names.
func listProcessesView(r Reader) ([]Process, Vanished, error) {
	procs, gone, err := ListProcesses(r)
	if err != nil {
		return nil, gone, err
	}
	boot, err := ReadBootTime(r)
	if err != nil {
		return nil, gone, err
	}
	for i := range procs {
		procs[i].Start = boot.Add(time.Duration(procs[i].StartTicks) * time.Second / userHZ)
	}
	if err := nameUsers(r, procs); err != nil {
		return nil, gone, err
	}
	return procs, gone, nil
}
