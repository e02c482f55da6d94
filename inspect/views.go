package inspect

// Reader is what a view reads through: files and directories, symbolic links (a descriptor's
// target) and record devices (the kernel log).
type Reader interface {
	Files
	Links
	Records
}

// View is one view of a running kernel as every front end knows it: its name, its help, whether
// it reads one process, and how to compute its records. The records are what --json prints, so
// their Go type is the view's JSON shape.
type View struct {
	// Name is the command that shows the view (hybridbridge NAME) and the name the memo files
	// what the view's system calls teach it under.
	Name  string
	Short string // one line of help
	Long  string // more help, on what it reads; may be empty
	PID   bool   // reads one process, chosen with --pid
	read  func(r Reader, pid int) (any, Vanished, error)
}

// Read computes the view's records from r (of process pid for a PID view; pid is ignored
// otherwise). What vanished while it was read is left out and counted in Vanished; with an error
// there are no records, so nothing half read can be printed.
func (v View) Read(r Reader, pid int) (any, Vanished, error) { return v.read(r, pid) }

// TypedView is a View whose records keep their Go type, for callers that store them in typed
// fields (the console's frame) or compare them field by field.
type TypedView[T any] struct {
	View
	readTyped func(r Reader, pid int) (T, Vanished, error)
}

// ReadTyped is Read with the records typed; with an error they are T's zero value.
func (v TypedView[T]) ReadTyped(r Reader, pid int) (T, Vanished, error) { return v.readTyped(r, pid) }

// newView makes a TypedView of read, the only place a view's records are computed, so that Read
// and ReadTyped cannot disagree.
func newView[T any](v View, read func(r Reader, pid int) (T, Vanished, error)) TypedView[T] {
	typed := func(r Reader, pid int) (T, Vanished, error) {
		recs, gone, err := read(r, pid)
		if err != nil {
			var zero T
			return zero, gone, err
		}
		return recs, gone, nil
	}
	v.read = func(r Reader, pid int) (any, Vanished, error) {
		recs, gone, err := typed(r, pid)
		if err != nil {
			return nil, gone, err
		}
		return recs, gone, nil
	}
	return TypedView[T]{View: v, readTyped: typed}
}

// Views is every view, in the order benchmarks and tests run them. The CLI makes a command of
// each (hybridbridge NAME [--pid PID] [--json]); the console and the engine benchmark pick
// theirs from it; the bridge tests read each one through every engine mode and compare it with
// the guest's own files.
//
// To add a view:
//   - write its walker in this package, returning JSON-tagged records and counting in Vanished
//     what it skips because it was gone when read;
//   - declare its TypedView below with newView and append it here;
//   - give it a printer in the CLI (cli/views.go; the CLI refuses to build its commands
//     without one);
//   - if it reads files no other view reads, add them to what the bridge tests capture in the
//     guest as ground truth (viewFiles in bridge/views_test.go), and to the walkers' fault
//     injection (skips in walk_test.go) what it may skip as vanished.
var Views = []View{
	ProcessView.View, ModuleView.View, SocketView.View, UptimeView.View, UnameView.View,
	MeminfoView.View, MountView.View, OpenFileView.View, EnvironView.View, KernelLogView.View,
	NeighbourView.View, InterfaceView.View,
}

var (
	ProcessView = newView(View{Name: "ps", Short: "List a guest's processes, computed by its own kernel code in the SVM",
		Long: `List the processes of a running guest from outside it. The guest is paused; its kernel's own
code, run in the secure VM against the guest's memory, produces /proc/<pid>/{stat,status,cmdline},
which are parsed as ps does; then the guest resumes. START is the guest's boot time (/proc/stat)
plus the process's start, in UTC; TIME is its user and system CPU time. USER is the real
user's name in the guest's /etc/passwd, read through the SVM like the /proc files when all of it is
in the guest's page cache (the disk is never read), and the uid otherwise: never a guess. NSPID is
the PID inside a nested PID namespace. A process that exited while being read is left
out and counted on stderr; any other failure to read fails the command, with no table printed. A
command line the kernel returned cut short is shown as "?" with the reason, never guessed. One line
of engine work goes to stderr.`},
		func(r Reader, _ int) ([]Process, Vanished, error) { return nonNil(listProcessesView(r)) })

	ModuleView = newView(View{Name: "lsmod", Short: "List the guest's kernel modules (/proc/modules)"},
		func(r Reader, _ int) ([]Module, Vanished, error) { return whole(ListModules(r)) })

	SocketView = newView(View{Name: "netstat", Short: "List the guest's TCP, UDP and Unix sockets with the processes holding them",
		Long: `Sockets from /proc/net/{tcp,tcp6,udp,udp6,unix} of the guest's initial network namespace, and
the processes holding each one (from every /proc/<pid>/fd link socket:[inode]). A process holding
a socket that is in none of those tables is in another network namespace: that namespace's tables
are read through it (/proc/<pid>/net) and its sockets listed with the namespace (NETNS).`},
		func(r Reader, _ int) ([]Socket, Vanished, error) { return nonNil(ListSockets(r, true)) })

	UptimeView = newView(View{Name: "uptime", Short: "The guest's uptime and load (its clock, not the host's)",
		Long: `The guest's time since boot and idle time (/proc/uptime) and load averages (/proc/loadavg).
The guest is paused while it is read: its clock is shown as of its last timekeeping update.`},
		readUptimeLoad)

	UnameView = newView(View{Name: "uname", Short: "The guest's kernel and host names (uname -a)"},
		func(r Reader, _ int) (Uname, Vanished, error) { return whole(ReadUname(r)) })

	MeminfoView = newView(View{Name: "free", Short: "The guest's memory (/proc/meminfo)"},
		func(r Reader, _ int) ([]MemField, Vanished, error) { return whole(ReadMeminfo(r)) })

	MountView = newView(View{Name: "mounts", Short: "The guest's mounted file systems (/proc/mounts of its init)"},
		func(r Reader, _ int) ([]Mount, Vanished, error) { return whole(ReadMounts(r)) })

	OpenFileView = newView(View{Name: "lsof", Short: "Open files of a guest process (/proc/PID/fd and fdinfo)", PID: true},
		func(r Reader, pid int) ([]OpenFile, Vanished, error) { return nonNil(ListOpenFiles(r, r, pid)) })

	EnvironView = newView(View{Name: "env", Short: "The environment of a guest process (/proc/PID/environ)", PID: true},
		func(r Reader, pid int) ([]string, Vanished, error) { return whole(ReadEnviron(r, pid)) })

	KernelLogView = newView(View{Name: "dmesg", Short: "The guest's kernel log (its /dev/kmsg)"},
		func(r Reader, _ int) ([]LogLine, Vanished, error) { return whole(ReadKernelLog(r)) })

	NeighbourView = newView(View{Name: "arp", Short: "The guest's neighbour table (/proc/net/arp)"},
		func(r Reader, _ int) ([]Neighbour, Vanished, error) { return whole(ListNeighbours(r)) })

	InterfaceView = newView(View{Name: "ifconfig", Short: "The guest's network interfaces, counters and addresses",
		Long: `Interfaces and counters from /proc/net/dev, IPv6 addresses from /proc/net/if_inet6, IPv4
addresses from the local routing table (/proc/net/fib_trie). procfs does not say which interface
an IPv4 address belongs to: it is placed on the interface of the connected route that covers it
(/proc/net/route), and listed as unassigned otherwise.`},
		func(r Reader, _ int) (Interfaces, Vanished, error) { return whole(ListInterfaces(r)) })
)

// UptimeLoad is the uptime view's record: the guest's clock and its load, read in one pause.
type UptimeLoad struct {
	Uptime  Uptime  `json:"uptime"`
	LoadAvg LoadAvg `json:"loadavg"`
}

func readUptimeLoad(r Reader, _ int) (UptimeLoad, Vanished, error) {
	u, err := ReadUptime(r)
	if err != nil {
		return UptimeLoad{}, Vanished{}, err
	}
	l, err := ReadLoadAvg(r)
	return UptimeLoad{Uptime: u, LoadAvg: l}, Vanished{}, err
}

// nonNil makes an empty list [] in JSON rather than null, as the commands of these views have
// always printed it.
func nonNil[T any](v []T, gone Vanished, err error) ([]T, Vanished, error) {
	if v == nil && err == nil {
		v = []T{}
	}
	return v, gone, err
}

// whole adapts a walker that has nothing to leave out: it reads fixed files (a /proc table, a
// sysctl, a device), or the one process asked for, whose exit fails the view.
func whole[T any](v T, err error) (T, Vanished, error) { return v, Vanished{}, err }
