// C side of package emu. Go cannot call variadic C functions (uc_hook_add,
// uc_ctl) and must not hand Go pointers to C, so every Unicorn callback is a
// small C function here that forwards an integer hook id to a Go trampoline
// (export.go), and the batched tracer runs entirely in C.
#ifndef HB_SHIM_H
#define HB_SHIM_H

#include <stdbool.h>
#include <stdint.h>
#include <unicorn/unicorn.h>

// Which Go trampoline a hook forwards to.
enum hb_cb_kind {
	HB_CB_CODE = 1,     // UC_HOOK_CODE / UC_HOOK_BLOCK
	HB_CB_MEM,          // UC_HOOK_MEM_READ/WRITE/FETCH/READ_AFTER
	HB_CB_MEM_INVALID,  // UC_HOOK_MEM_*_UNMAPPED / *_PROT
	HB_CB_INTR,         // UC_HOOK_INTR
	HB_CB_IN,           // UC_HOOK_INSN + UC_X86_INS_IN
	HB_CB_OUT,          // UC_HOOK_INSN + UC_X86_INS_OUT
	HB_CB_SYSCALL,      // UC_HOOK_INSN + UC_X86_INS_SYSCALL
	HB_CB_CPUID,        // UC_HOOK_INSN + UC_X86_INS_CPUID
	HB_CB_INSN_INVALID, // UC_HOOK_INSN_INVALID
};

// One traced event. Layout is mirrored by emu.Event; trace.go checks it.
typedef struct hb_event {
	uint8_t kind;
	uint8_t size;
	uint8_t pad[6];
	uint64_t addr;
	uint64_t value;
} hb_event;

// A fixed-capacity event array filled by the C trace hooks. When it is full
// and flush is set, the Go side is called to consume it; otherwise further
// events are counted in dropped.
typedef struct hb_trace {
	hb_event *ev;
	uint32_t cap;
	uint32_t len;
	uint64_t dropped;
	uintptr_t id;
	int flush;
} hb_trace;

// A budget on executed code, counted per translated block in C so that it costs one cheap call
// per block instead of Unicorn's per-instruction counting hook (which also makes every other code
// hook's range check run per instruction).
typedef struct hb_budget {
	uint64_t insns;  // estimated instructions executed since the last reset
	uint64_t blocks; // blocks executed since the last reset
	uint64_t limit;  // stop when insns exceeds it; 0 = no limit
	int hit;
} hb_budget;

uc_err hb_budget_add(uc_engine *uc, uc_hook *hh, hb_budget *b);

// A set of (instruction address, physical address) pairs whose accesses a filtered memory hook
// lets through without calling Go: open addressing, power-of-two capacity, pc 0 = empty slot.
typedef struct hb_pcset {
	uint64_t *pc;
	uint64_t *addr;
	uint64_t *hits; // accesses let through per pair, until Go drains them
	uint32_t cap;
	uint32_t len;
	uintptr_t id;     // the Go hook called for pairs not in the set
	uint64_t skipped; // accesses let through in C
	uint64_t passed;  // accesses handed to Go
	uint64_t last_pc; // the instruction of the access being handed to Go
} hb_pcset;

hb_pcset *hb_pcset_new(uint32_t cap, uintptr_t id);
void hb_pcset_free(hb_pcset *s);
int hb_pcset_add(hb_pcset *s, uint64_t pc, uint64_t addr);
void hb_pcset_clear(hb_pcset *s);
// A hook's physical ranges, sorted, inclusive ends. Unicorn checks every hook's bounds on every
// access once any memory hook exists, so many small hooks cost more than one hook over their
// hull that checks its own ranges in C.
#define HB_MAX_SPANS 64
typedef struct hb_spans {
	void *target; // the hb_pcset or hb_gate the hook serves
	uint32_t n;
	uint64_t lo[HB_MAX_SPANS], hi[HB_MAX_SPANS];
} hb_spans;

uc_err hb_mem_filtered_add(uc_engine *uc, uc_hook *hh, int type, hb_spans *sp);

// A memory hook that calls Go only while open (e.g. while a swapped-in value waits to be
// restored): closed, an access costs one load in C.
typedef struct hb_gate {
	int open;
	uintptr_t id;
} hb_gate;

uc_err hb_mem_gated_add(uc_engine *uc, uc_hook *hh, int type, hb_spans *sp);

// The pages a memory-write hook saw written since the last drain, each listed once.
typedef struct hb_writelog {
	uint64_t base;  // physical address of page 0
	uint64_t pages; // pages covered
	uint8_t *seen;  // one byte per page
	uint64_t *list; // page numbers in first-write order
	uint64_t len;
} hb_writelog;

hb_writelog *hb_writelog_new(uint64_t base, uint64_t pages);
void hb_writelog_free(hb_writelog *w);
void hb_writelog_mark(hb_writelog *w, uint64_t addr, uint64_t size);
uc_err hb_writelog_add(uc_engine *uc, uc_hook *hh, hb_writelog *w, uint64_t begin, uint64_t end);

uc_err hb_hook_add(uc_engine *uc, uc_hook *hh, int type, int kind, uintptr_t id,
                   uint64_t begin, uint64_t end, int insn);
uc_err hb_trace_add(uc_engine *uc, uc_hook *hh, int type, hb_trace *t,
                    uint64_t begin, uint64_t end);
uc_err hb_set_cpu_model(uc_engine *uc, int model);
uc_err hb_flush_tlb(uc_engine *uc);
uc_err hb_flush_tb(uc_engine *uc);
uc_err hb_reg_read_batch(uc_engine *uc, int *regs, uint64_t *vals, int n);
uc_err hb_reg_write_batch(uc_engine *uc, int *regs, uint64_t *vals, int n);

#endif
