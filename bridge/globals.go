package bridge

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"

	"hybridbridge/decision"
	"hybridbridge/taint"
	"hybridbridge/vmm"
)

// redirectList are the roots of guest state: the kernel globals whose guest copy a view must read.
// Each entry says which kernel path needed it. Everything reached from them lies in the guest's
// (overlaid) memory, so very few are needed.
var redirectList = map[string]string{
	// proc_pid_readdir → next_tgid → find_ge_pid → idr_get_next(&ns->idr), and proc_pid_lookup →
	// find_task_by_pid_ns: the PID IDR of the /proc mount's namespace, which is &init_pid_ns.
	"init_pid_ns": "process IDs (getdents64 of /proc, /proc/<pid> lookup)",
	// do_task_stat/proc_pid_status → task_tgid_nr_ns(task->real_parent): the parent of pid 1 and
	// 2 is the guest's idle task, a static task_struct with its signal struct and pid.
	"init_task":       "the guest's idle task (parent of pid 1 and 2)",
	"init_signals":    "the idle task's signal struct",
	"init_struct_pid": "the idle task's struct pid (__task_pid_nr_ns)",
	// m_start → seq_list_start(&modules): the list of loaded modules (/proc/modules).
	"modules": "loaded modules (/proc/modules)",
	// The guest's policy for printing kernel addresses (kallsyms_show_value in m_show, %pK).
	"kptr_restrict":              "the guest's address-printing policy (/proc/modules addresses)",
	"sysctl_perf_event_paranoid": "the guest's address-printing policy (kallsyms_for_perf)",
	// /proc/<pid>/net → get_proc_task_net → task->nsproxy->net_ns: the guest's network namespace
	// and, reached from it by constant address, its socket tables.
	"init_nsproxy":    "the namespaces of the guest's first tasks (network, UTS, mount)",
	"init_net":        "the guest's initial network namespace (/proc/net/*)",
	"tcp_hashinfo":    "TCP sockets (/proc/net/tcp, tcp6)",
	"udp_table":       "UDP sockets (/proc/net/udp, udp6)",
	"tcp4_seq_afinfo": "TCP sockets (/proc/net/tcp)",
	"tcp6_seq_afinfo": "TCP sockets (/proc/net/tcp6)",
	"udp4_seq_afinfo": "UDP sockets (/proc/net/udp)",
	"udp6_seq_afinfo": "UDP sockets (/proc/net/udp6)",
	"arp_tbl":         "the neighbour table (/proc/net/arp)",
	// A program's netlink dump (busybox ip) locks the RTNL mutex through its socket's cb_mutex,
	// reached by a lookup in the guest's namespace (so the guest's), and rtnl_is_locked then
	// asserts it by address: both must be the guest's lock.
	"rtnl_mutex":  "the guest's RTNL lock (netlink dumps: ip addr, ip link, ip route)",
	"init_uts_ns": "host and kernel names (/proc/sys/kernel/{hostname,osrelease,version,...})",
	// The guest's clock: a view's "now" is the guest's (uptime, start times, socket timers). The
	// SVM's system calls take no timer interrupt, so nothing writes these while a view runs;
	// read_tsc gives the guest's last counter value (svm.Options.Clock), so the clock
	// reads the guest's time as of its last timekeeping update.
	"tk_core":               "the guest's timekeeper (/proc/uptime, ktime_get_*)",
	"jiffies":               "the guest's tick count (timers, /proc/net/* timer columns)",
	"jiffies_64":            "the guest's tick count (the same variable)",
	"timekeeping_suspended": "the guest's timekeeper state (ktime_get_*)",
	// The guest's policy for reading its kernel log (devkmsg_open, check_syslog_permissions).
	"devkmsg_log":      "the guest's /dev/kmsg policy (printk.devkmsg)",
	"dmesg_restrict":   "the guest's kernel-log reading policy",
	"tick_nohz_active": "the guest's idle accounting mode (/proc/uptime idle time)",
	// Load and memory statistics of the guest (/proc/loadavg, /proc/meminfo, tmpfs sizes).
	"avenrun":                  "load averages (/proc/loadavg)",
	"nr_threads":               "number of tasks (/proc/loadavg)",
	"_totalram_pages":          "total RAM (/proc/meminfo; tmpfs default size in /proc/mounts)",
	"totalreserve_pages":       "reserved pages (/proc/meminfo MemAvailable)",
	"total_swap_pages":         "swap (/proc/meminfo)",
	"nr_swap_pages":            "swap (/proc/meminfo)",
	"nr_swapfiles":             "swap (/proc/meminfo)",
	"vm_committed_as":          "committed memory (/proc/meminfo)",
	"nr_vmalloc_pages":         "vmalloc use (/proc/meminfo)",
	"pcpu_nr_populated":        "per-cpu memory (/proc/meminfo)",
	"direct_pages_count":       "direct-map page sizes (/proc/meminfo DirectMap*)",
	"num_poisoned_pages":       "hardware-poisoned pages (/proc/meminfo)",
	"totalcma_pages":           "CMA (/proc/meminfo)",
	"hstates":                  "huge pages (/proc/meminfo)",
	"hugetlb_max_hstate":       "huge pages (/proc/meminfo)",
	"direct_gbpages":           "direct-map page sizes (/proc/meminfo DirectMap1G)",
	"pcpu_nr_units":            "per-cpu memory (/proc/meminfo Percpu)",
	"sysctl_overcommit_kbytes": "commit limit (/proc/meminfo CommitLimit)",
	"sysctl_overcommit_ratio":  "commit limit (/proc/meminfo CommitLimit)",
	"zswap_pool_total_size":    "zswap (/proc/meminfo)",
	"zswap_stored_pages":       "zswap (/proc/meminfo)",
	"default_hstate_idx":       "huge pages (/proc/meminfo)",
	// /proc/stat, for the boot time the ps view adds start times to: show_stat prints the
	// guest's interrupt and fork counts on the way. The SVM takes no interrupt while a view runs.
	"total_forks":               "forks since boot (/proc/stat processes)",
	"nr_irqs":                   "interrupt descriptors (/proc/stat intr)",
	"allocated_irqs":            "interrupt descriptors (/proc/stat intr)",
	"irq_desc_tree":             "interrupt descriptors (/proc/stat intr)",
	"irq_err_count":             "spurious interrupts (/proc/stat intr)",
	"x86_platform_ipi_callback": "platform IPI counts (/proc/stat intr)",
	// Mount options the guest's file systems print from globals (/proc/mounts).
	"cgrp_dfl_root": "the guest's cgroup2 hierarchy (its options in /proc/mounts)",
	"kmsg_bytes":    "pstore's kmsg_bytes option (/proc/mounts)",
}

// redirectInList are globals that serve both: the SVM's machinery reads them for itself, and a
// view's functions read them for the guest. They are redirected only in the named functions
// (where the compiler may have inlined helpers: the list names the functions the memo showed).
// Everywhere else they stay the SVM's.
var redirectInList = map[string][]string{
	// per_cpu(var, cpu) for another CPU adds __per_cpu_offset[cpu]: views summing per-CPU
	// counters must add the guest's offsets (its per-CPU areas, in its RAM); the SVM's allocator
	// and scheduler, its own.
	// kcpustat_cpu_fetch: a guest ticking periodically (no NOHZ: e.g. no ACPI timer, TSC
	// unstable) counts its idle time in each CPU's kernel_cpustat, read there, not inlined.
	"__per_cpu_offset": {"uptime_proc_show", "kcpustat_cpu_fetch", "get_idle_time", "get_cpu_idle_time_us", "nr_running",
		"meminfo_proc_show", "si_mem_available", "si_meminfo", "vm_events_fold_cpu", "show_stat",
		// percpu_counter_sum of a guest counter (vm_committed_as in /proc/meminfo). The SVM's own
		// per-CPU counters are not summed by the system calls the views make.
		"__percpu_counter_sum",
		// Per-CPU packet counters of the guest's loopback and software devices (/proc/net/dev).
		"dev_lstats_read", "loopback_get_stats64", "dev_fetch_sw_netstats", "dev_get_tstats64"},
	// The kernel log's ring buffer (printk's prb pointer), where /dev/kmsg reads it: the guest's
	// log. The SVM's printk keeps its own.
	"prb": {"devkmsg_open", "devkmsg_read", "devkmsg_llseek", "printk_get_next_message"},
	// Possible and online CPUs, for the same loops.
	"__cpu_possible_mask": {"uptime_proc_show", "get_idle_time", "show_stat", "__percpu_counter_sum",
		"dev_lstats_read", "loopback_get_stats64", "dev_fetch_sw_netstats", "dev_get_tstats64"},
	"__cpu_online_mask": {"get_idle_time", "get_cpu_idle_time_us", "nr_running", "show_stat"},
	"__num_online_cpus": {"show_stat"},
	// How far those loops go: a guest with more CPUs than the SVM's one has per-CPU data beyond
	// it (its idle time in /proc/uptime, vm_committed_as in /proc/meminfo, loopback counters).
	"nr_cpu_ids": {"uptime_proc_show", "get_idle_time", "get_cpu_idle_time_us", "nr_running", "show_stat",
		"__percpu_counter_sum", "dev_lstats_read", "loopback_get_stats64", "dev_fetch_sw_netstats", "dev_get_tstats64",
		"meminfo_proc_show", "si_mem_available", "si_meminfo", "vm_events_fold_cpu"},
	// The zones (NUMA node 0's pglist_data) for MemAvailable's watermarks and free counts.
	"node_data": {"si_mem_available", "meminfo_proc_show", "si_meminfo",
		// for_each_zone in si_mem_available starts here: without these, MemAvailable was
		// computed from the SVM's watermarks (the guest tools' free showed it 192 KiB off).
		"first_online_pgdat", "next_online_pgdat"},
	// The online nodes, which for_each_zone walks (by a guest node's id) for MemAvailable and
	// sysinfo's counts; everywhere else (a program's exec: the LRU generations of its mm) the
	// SVM's own.
	"node_states": {"first_online_pgdat", "next_online_pgdat", "next_zone"},
	// vm_zone_stat/vm_node_stat: the allocator folds its per-CPU deltas into them; meminfo reads.
	"vm_zone_stat": {"meminfo_proc_show", "si_mem_available", "si_meminfo", "si_meminfo_node"},
	"vm_node_stat": {"meminfo_proc_show", "si_mem_available", "si_meminfo", "si_meminfo_node"},
}

// sameInBoth are globals parts of which are the same in both kernels by construction, with the
// functions that read only those parts: there an access is the SVM's whatever the pointer's
// provenance, so that one instruction is not decided both ways. A guest's non-dumpable task (a
// daemon that changed its credentials) has mm->user_ns = &init_user_ns, through which
// task_dump_owner maps uid 0 for its /proc files, while the reader's own credentials reach the
// same global by constant address; the initial namespace's uid and gid maps are the identity in
// every kernel and cannot be written.
var sameInBoth = map[string][]string{
	"init_user_ns": {"map_id_range_down", "map_id_up"},
	// A program's netlink socket (busybox ip) is found again by a lookup keyed by the guest's
	// namespace, so its pointer carries the guest's provenance, though the socket is the SVM's:
	// netlink_dump asks whether its protocol accounts memory (sk_has_account), which netlink's
	// struct proto, a constant of the kernel image, never does.
	"netlink_proto": {"netlink_dump", "sock_rfree"},
}

// guestLookupList are the lookup tables a path walk starts from, kept local for the views (the
// SVM's own paths) and the guest's while a guest file is read (Session.ReadGuestFile): the same
// instructions look up both, so no per-instruction decision could serve them. While they are the
// guest's, no lookup goes through the SVM's own root.
var guestLookupList = map[string]string{
	"dentry_hashtable": "the dentry cache's hash (path lookup)",
	"d_hash_shift":     "the dentry cache's hash (path lookup)",
	"inode_hashtable":  "the inode cache's hash (an inode a lookup reads)",
	"i_hash_shift":     "the inode cache's hash",
	"i_hash_mask":      "the inode cache's hash",
	"mount_hashtable":  "the mount hash (crossing a mount point)",
	"m_hash_mask":      "the mount hash",
	"m_hash_shift":     "the mount hash",
}

// scoped reports whether virt is in one of redirectInList's globals, which the function that
// touches them decides, whatever the pointer's provenance.
func (g *Globals) scoped(virt uint64) bool {
	name, _, ok := g.syms.Lookup(virt)
	_, listed := redirectInList[name]
	return ok && listed
}

// guestLookup reports whether virt is in one of guestLookupList's globals.
func (g *Globals) guestLookup(virt uint64) bool {
	name, _, ok := g.syms.Lookup(virt)
	_, listed := guestLookupList[name]
	return ok && listed
}

// keepLocalList are globals of the SVM's own machinery, which must stay the SVM's whatever
// function touches them: redirecting them breaks the SVM (e.g. freeing into another VM's slab
// cache) or mixes its state with the guest's. Grouped by the machinery they belong to; the ps
// view's accesses (getdents64 of /proc, open/read/close of /proc/<pid>/{stat,status,cmdline})
// found them.
var keepLocalList = map[string]string{}

func keepLocal(reason string, names ...string) {
	for _, n := range names {
		keepLocalList[n] = reason
	}
}

func init() {
	keepLocal("memory layout and allocator of the SVM (identical constants, or its own caches)",
		"page_offset_base", "vmemmap_base", "vmalloc_base", "phys_base", "physical_mask", "sme_me_mask",
		"pgdir_shift", "gfp_allowed_mask", "mem_section", "highest_memmap_pfn",
		"page_group_by_mobility_disabled", "percpu_counter_batch", "preferred_node_policy",
		"root_mem_cgroup", "lru_disable_count", "kmalloc_caches", "names_cachep", "filp_cachep",
		"size_index", "pde_opener_cache", "bit_wait_table",
		"nr_online_nodes", // the page allocator's (get_page_from_freelist): seq_file buffers of a page and more
		"dentry_cache", "lsm_inode_cache", "lsm_file_cache", "proc_inode_cachep", "seq_file_cache")
	keepLocal("VFS of the reader: path lookup, the dentry cache and the SVM's /proc mount",
		"dentry_hashtable", "d_hash_shift", "in_lookup_hashtable", "rename_lock", "mount_lock",
		"mount_hashtable", "m_hash_mask", "m_hash_shift", "proc_subdir_lock", "proc_root",
		"blockdev_superblock", "noop_backing_dev_info", "init_fs", "fsnotify_mark_srcu",
		"dnotify_group", "nr_files", "files_stat", "shared_last_ino.2", "init_files",
		"nlink_tgid", "nlink_tid") // computed once at boot from static tables: the same in both kernels
	keepLocal("security modules checking the reader's access",
		"security_hook_heads", "bpf_lsm_hooks", "apparmor_hooks", "apparmor_blob_sizes", "aa_null",
		"tomoyo_hooks", "tomoyo_ss", "tomoyo_blob_sizes", "tomoyo_kernel_domain", "tomoyo_policy_loaded",
		"bpf_lsm_blob_sizes", "sysctl_protected_symlinks",
		"landlock_hooks", "landlock_blob_sizes", "capability_hooks", "yama_hooks", "ima_policy_flag")
	keepLocal("the reader's credentials and namespaces (ids are shown as the reader maps them; the mapping is the identity in both)",
		"init_user_ns", "init_groups", "init_ucounts", "overflowuid", "overflowgid", "init_time_ns",
		"namespace_sem", "uts_sem")
	keepLocal("the SVM's scheduler, RCU, workqueues and CPU state",
		"rcu_state", "qhimark", "qovld_calc", "wq_pool_attach_mutex",
		"system_state", "boot_cpu_data", "vsyscall_mode", "spectre_v2_user_ibpb", "spectre_v2_user_stibp",
		"ssb_mode", "__sched_clock_offset")
	keepLocal("the SVM's printing of kernel pointers (%p hashing keys)",
		"filled_random_ptr_key", "debug_boot_weak_hash", "no_hash_pointers")
	keepLocal("the reader's sysctl tables (/proc/sys lookups; the values come from the guest's namespaces)",
		"sysctl_lock", "sysctl_table_root", "uts_kern_table", "hung_task_sysctls", "watchdog_sysctls",
		"sched_autogroup_sysctls", "apparmor_sysctl_table", "coredump_sysctls", "hostname_poll", "domainname_poll",
		// the rest of /proc/sys/kernel, which a program may list (find /proc/sys)
		"printk_sysctls", "key_sysctls", "random_table", "pty_table", "sched_rt_sysctls", "set_root",
		"bpf_syscall_table", "firmware_config_table", "kern_panic_table", "kern_reboot_table", "sched_dl_sysctls",
		"sched_fair_sysctls", "seccomp_sysctl_table", "usermodehelper_table", "ftrace_sysctls", "kern_acct_table",
		"kern_delayacct_table", "kern_do_mounts_initrd_table", "kern_exit_table", "kexec_core_sysctls",
		"pid_ns_ctl_table", "sched_core_sysctls", "sched_energy_aware_sysctls", "sld_sysctls", "timer_sysctl",
		"yama_sysctl_table",
		"swap_lock")
	keepLocal("the SVM's character devices, which the reader opens (/dev/kmsg)",
		"cdev_lock", "chrdevs_lock", "cdev_map", "init_css_set")
	// ReadGuestFile maps the file into the reader's address space to ask mincore whether it is
	// in memory: the mapping is the SVM's (its allocator, its page-table constants, its limits).
	keepLocal("the reader's own address space (the mapping ReadGuestFile checks residency through)",
		"maple_node_cache", "vm_area_cachep", "va_align", "__supported_pte_mask", "protection_map",
		"cc_mask", "ptrs_per_p4d", "dac_mmap_min_addr", "sysctl_max_map_count", "nr_mmap_events",
		"uprobes_tree", "shmem_huge", "transparent_hugepage_flags")
	keepLocal("constant pointers of the kernel image (tracepoint strings of the mmap path)", "___tp_str.18", "___tp_str.23")
	// mtree_load's tracepoint passes __func__ through a pointer kallsyms names after its section
	// neighbour: a constant of the kernel image, the same in both.
	keepLocal("constant pointers of the kernel image (tracepoint strings)", "___tp_str.17")
	// proc_ns_dir_lookup finds /proc/<pid>/ns/<kind> in a constant table of namespace kinds.
	keepLocal("constant tables of the kernel image (namespace kinds)", "ns_entries")
	keepLocal("the SVM's module loader lock (the guest's list is read under the SVM's lock)",
		"module_mutex")
	keepLocal("the SVM's entropy pool (slab freelist randomisation draws from it)",
		"input_pool", "base_crng", "crng_init")
	keepLocal("the SVM's kernel log and console",
		"__log_buf", "printk_rb_static", "_printk_rb_static_infos", "_printk_rb_static_descs",
		"console_sem", "console_owner_lock", "console_owner", "console_waiter", "console_locked",
		"console_suspended", "console_drivers", "console_printk", "console_may_schedule",
		"console_msg_format", "serial8250_ports", "univ8250_console", "log_wait", "printk_delay_msec",
		"printk_time", "boot_delay", "suppress_printk", "suppress_panic_printk",
		"__printk_percpu_data_ready", "dump_stack_arch_desc_str")
	keepLocal("the SVM's own oops, taint and warning state",
		"panic_cpu", "oops_in_progress", "tainted_mask", "panic_on_taint", "panic_on_warn", "warn_count",
		"warn_limit", "__disable_trace_on_warning", "kexec_crash_image")
	// A program run in the SVM (Session.RunProgram) is the SVM's process: its exec, its address
	// space, page faults, memory charging, credentials and FPU state are the SVM's, on the
	// SVM's CPU. Only what it reads through its system calls is the guest's.
	keepLocal("a program's exec in the SVM (binary formats, credentials, exec notifications)",
		"formats", "binfmt_lock", "elf_format", "script_format", "cred_jar", "file_caps_enabled", "root_user",
		"proc_event_num_listeners", "nr_comm_events", "done.0")
	keepLocal("a program's address space in the SVM (its page tables, mappings, layout and faults)",
		"init_top_pgt", "pgd_lock", "pgd_list", "last_mm_ctx_id", "mm_cachep", "anon_vma_cachep",
		"anon_vma_chain_cachep", "__userpte_alloc_gfp", "fault_around_bytes", "huge_zero_page", "zero_pfn",
		"tlb_single_page_flush_ceiling", "kmmio_count", "delayed_uprobe_lock", "delayed_uprobe_list",
		"randomize_va_space", "mmap_rnd_bits", "mmap_rnd_compat_bits", "sysctl_legacy_va_layout",
		"stack_guard_gap", "mmap_min_addr", "vdso64_enabled", "sysctl_overcommit_memory", "vm_committed_as_batch",
		"empty_zero_page")
	keepLocal("a program's memory charging in the SVM (its cgroup)",
		"mem_cgroup_events_index", "blkcg_root", "stats_flush_threshold")
	keepLocal("the SVM's CPU features, which a program's FPU state and signal frames follow",
		"init_fpstate", "fpu_kernel_cfg", "fpu_user_cfg", "elf_hwcap2", "max_frame_size")
	keepLocal("security modules checking a program's exec, mappings and sockets",
		"kernel_t", "aa_buffers_lock", "aa_global_buffers", "buffer_count", "reserve_count", "aa_g_audit", "aa_g_debug",
		"aa_g_path_max", "blob_sizes", "tomoyo_kernel_namespace", "tomoyo_trigger")
	keepLocal("constant pointers of the kernel image (tracepoint strings of the exec and fault paths)",
		"___tp_str.19", "___tp_str.21", "___tp_str.22", "___tp_str.31", "___tp_str.40")
	keepLocal("files written into the SVM's tmpfs for a program's run (the user's binary, the guest's /etc/passwd and /etc/group)",
		"shmem_inode_cachep", "shmem_xattr_handlers", "evm_initialized", "sysctl_protected_fifos", "sysctl_protected_regular",
		"radix_tree_node_cachep")
	// A program's netlink socket (busybox ip) is the SVM's: its tables, protocol handlers and
	// buffers. What it dumps is reached through the guest's namespace (init_nsproxy, init_net).
	keepLocal("a program's sockets in the SVM (socket creation, netlink tables and handlers, buffers)",
		"net_families", "sock_mnt", "sock_inode_cachep", "inetsw", "inetsw_array", "inet6_ops", "inet_af_ops",
		"tcp_prot", "tcp_sockets_allocated", "netlink_proto", "netlink_tap_net_id", "nl_table", "nl_table_lock",
		"nl_table_users", "nl_table_wait", "rtnl_msg_handlers", "rtnl_af_ops",
		"skbuff_head_cache", "skbuff_fclone_cache", "sysctl_rmem_default", "sysctl_wmem_default",
		"sysctl_net_busy_read")
	keepLocal("the SVM's code metadata: unwinder tables, tracing, kprobes, text lookups",
		"__start_orc_unwind", "__start_orc_unwind_ip", "orc_lookup", "lookup_num_blocks", "orc_init",
		"ftrace_list_end", "ftrace_ops_list", "ftrace_mod_maps", "kprobe_insn_slots",
		"kprobe_optinsn_slots", "bpf_tree")
}

// policyVersion changes with the bridge's own decision rules (bridge/policy.go).
const policyVersion = 4

// PolicyVersion names the lists' content, the taint rules and the bridge's decision rules:
// memoized decisions are valid only for what made them.
func PolicyVersion() string {
	h := sha256.New()
	for _, l := range []map[string]string{redirectList, keepLocalList} {
		names := make([]string, 0, len(l))
		for n := range l {
			names = append(names, n)
		}
		sort.Strings(names)
		fmt.Fprintln(h, strings.Join(names, ","))
	}
	for _, l := range []map[string][]string{redirectInList, sameInBoth} {
		scoped := make([]string, 0, len(l))
		for n, fns := range l {
			scoped = append(scoped, n+"="+strings.Join(fns, "+"))
		}
		sort.Strings(scoped)
		fmt.Fprintln(h, strings.Join(scoped, ","))
	}
	fmt.Fprintln(h, "taint rules", taint.RulesVersion, "policy", policyVersion)
	return "lists-" + hex.EncodeToString(h.Sum(nil))[:12]
}

// Globals classifies kernel-global accesses by the data symbol they touch and counts the unknown
// ones by symbol, so they stay visible.
type Globals struct {
	syms *vmm.Symbols
	// frameless are the scopedHelpers found frameless in the SVM's code (framelessHelpers); set
	// before the first decision and read-only after.
	frameless map[string]bool

	mu      sync.Mutex
	unknown map[string]int // symbol -> accesses; guarded by mu
}

// NewGlobals builds the classifier over the kernel's symbols.
func NewGlobals(syms *vmm.Symbols) *Globals {
	return &Globals{syms: syms, unknown: map[string]int{}}
}

// count records an access to a global in neither list.
func (g *Globals) count(name string) {
	g.mu.Lock()
	g.unknown[name]++
	g.mu.Unlock()
}

// decide looks the global at virt, accessed by the instruction at pc, up in the lists: Redirect,
// Local, or Unknown for one in neither. It does not count. caller tells where a frameless scoped
// helper at pc returns to (Session.callerOf: 0 if unknown; nil, never asked): for the scoped
// globals that function decides, not the helper. It is asked only then.
// same reports whether the access at pc to the global at virt reads what sameInBoth says is the
// same in both kernels.
func (g *Globals) same(virt, pc uint64) bool {
	name, _, ok := g.syms.Lookup(virt)
	if !ok {
		return false
	}
	fns, listed := sameInBoth[name]
	if !listed {
		return false
	}
	fn, _, _ := g.syms.Lookup(pc)
	return slices.Contains(fns, fn)
}

func (g *Globals) decide(virt, pc uint64, caller func() uint64) decision.Decision {
	name, _, ok := g.syms.Lookup(virt)
	if !ok {
		return decision.Unknown
	}
	if fns, scoped := redirectInList[name]; scoped {
		fn, _, _ := g.syms.Lookup(pc)
		if g.frameless[fn] && caller != nil {
			if ret := caller(); ret != 0 {
				fn, _, _ = g.syms.Lookup(ret)
			}
		}
		for _, f := range fns {
			if f == fn {
				return decision.Redirect
			}
		}
		return decision.Local
	}
	if _, r := redirectList[name]; r {
		return decision.Redirect
	}
	if _, l := keepLocalList[name]; l {
		return decision.Local
	}
	return decision.Unknown
}

// UnknownCount is one global in neither list, with how often it was accessed.
type UnknownCount struct {
	Symbol   string `json:"symbol"`
	Accesses int    `json:"accesses"`
}

// Unknown lists the globals in neither list, most accessed first.
func (g *Globals) Unknown() []UnknownCount {
	g.mu.Lock()
	defer g.mu.Unlock()
	out := make([]UnknownCount, 0, len(g.unknown))
	for s, n := range g.unknown {
		out = append(out, UnknownCount{s, n})
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Accesses != out[j].Accesses {
			return out[i].Accesses > out[j].Accesses
		}
		return out[i].Symbol < out[j].Symbol
	})
	return out
}
