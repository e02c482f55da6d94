#include <stdlib.h>
#include <string.h>

#include "shim.h"
#include "_cgo_export.h"

static void cb_code(uc_engine *uc, uint64_t addr, uint32_t size, void *ud)
{
	hbGoCode((uintptr_t)ud, addr, size);
}

static void cb_mem(uc_engine *uc, uc_mem_type type, uint64_t addr, int size,
                   int64_t value, void *ud)
{
	hbGoMem((uintptr_t)ud, (int)type, addr, size, value);
}

static bool cb_mem_invalid(uc_engine *uc, uc_mem_type type, uint64_t addr,
                           int size, int64_t value, void *ud)
{
	return hbGoMemInvalid((uintptr_t)ud, (int)type, addr, size, value);
}

static void cb_intr(uc_engine *uc, uint32_t intno, void *ud)
{
	hbGoIntr((uintptr_t)ud, intno);
}

static uint32_t cb_in(uc_engine *uc, uint32_t port, int size, void *ud)
{
	return hbGoIn((uintptr_t)ud, port, size);
}

static void cb_out(uc_engine *uc, uint32_t port, int size, uint32_t value,
                   void *ud)
{
	hbGoOut((uintptr_t)ud, port, size, value);
}

static void cb_syscall(uc_engine *uc, void *ud)
{
	hbGoSyscall((uintptr_t)ud);
}

static int cb_cpuid(uc_engine *uc, void *ud)
{
	return hbGoCPUID((uintptr_t)ud);
}

static bool cb_insn_invalid(uc_engine *uc, void *ud)
{
	return hbGoInsnInvalid((uintptr_t)ud);
}

uc_err hb_hook_add(uc_engine *uc, uc_hook *hh, int type, int kind, uintptr_t id,
                   uint64_t begin, uint64_t end, int insn)
{
	void *cb;
	switch (kind) {
	case HB_CB_CODE: cb = (void *)cb_code; break;
	case HB_CB_MEM: cb = (void *)cb_mem; break;
	case HB_CB_MEM_INVALID: cb = (void *)cb_mem_invalid; break;
	case HB_CB_INTR: cb = (void *)cb_intr; break;
	case HB_CB_IN: cb = (void *)cb_in; break;
	case HB_CB_OUT: cb = (void *)cb_out; break;
	case HB_CB_SYSCALL: cb = (void *)cb_syscall; break;
	case HB_CB_CPUID: cb = (void *)cb_cpuid; break;
	case HB_CB_INSN_INVALID: cb = (void *)cb_insn_invalid; break;
	default: return UC_ERR_ARG;
	}
	if (type == UC_HOOK_INSN) {
		return uc_hook_add(uc, hh, type, cb, (void *)id, begin, end, insn);
	}
	return uc_hook_add(uc, hh, type, cb, (void *)id, begin, end);
}

// Event kinds; mirrored by emu.EventKind.
enum { HB_EV_EXEC = 1, HB_EV_BLOCK, HB_EV_READ, HB_EV_WRITE, HB_EV_FETCH };

static inline void trace_push(hb_trace *t, uint8_t kind, int size,
                              uint64_t addr, uint64_t value)
{
	if (__builtin_expect(t->len == t->cap, 0)) {
		if (t->flush) {
			hbGoTraceFull(t->id);
			t->len = 0;
		} else {
			t->dropped++;
			return;
		}
	}
	hb_event *e = &t->ev[t->len++];
	e->kind = kind;
	e->size = (uint8_t)size;
	e->addr = addr;
	e->value = value;
}

static void trace_code(uc_engine *uc, uint64_t addr, uint32_t size, void *ud)
{
	trace_push((hb_trace *)ud, HB_EV_EXEC, (int)size, addr, 0);
}

static void trace_block(uc_engine *uc, uint64_t addr, uint32_t size, void *ud)
{
	// Block sizes exceed 255; keep the full size in value.
	trace_push((hb_trace *)ud, HB_EV_BLOCK, 0, addr, size);
}

static void trace_mem(uc_engine *uc, uc_mem_type type, uint64_t addr, int size,
                      int64_t value, void *ud)
{
	uint8_t kind;
	switch (type) {
	case UC_MEM_READ: kind = HB_EV_READ; break;
	case UC_MEM_WRITE: kind = HB_EV_WRITE; break;
	case UC_MEM_FETCH: kind = HB_EV_FETCH; break;
	default: return;
	}
	trace_push((hb_trace *)ud, kind, size, addr, (uint64_t)value);
}

uc_err hb_trace_add(uc_engine *uc, uc_hook *hh, int type, hb_trace *t,
                    uint64_t begin, uint64_t end)
{
	void *cb;
	switch (type) {
	case UC_HOOK_CODE: cb = (void *)trace_code; break;
	case UC_HOOK_BLOCK: cb = (void *)trace_block; break;
	default: cb = (void *)trace_mem; break;
	}
	return uc_hook_add(uc, hh, type, cb, t, begin, end);
}

// x86-64 kernel code averages about 4 bytes per instruction; the block hook only knows bytes.
#define HB_BYTES_PER_INSN 4

static void budget_block(uc_engine *uc, uint64_t addr, uint32_t size, void *user)
{
	hb_budget *b = user;
	(void)addr;
	b->blocks++;
	b->insns += (size + HB_BYTES_PER_INSN - 1) / HB_BYTES_PER_INSN;
	if (b->limit != 0 && b->insns > b->limit && !b->hit) {
		b->hit = 1;
		uc_emu_stop(uc);
	}
}

uc_err hb_budget_add(uc_engine *uc, uc_hook *hh, hb_budget *b)
{
	return uc_hook_add(uc, hh, UC_HOOK_BLOCK, (void *)budget_block, b, 1, 0);
}

uc_err hb_flush_tlb(uc_engine *uc)
{
	return uc_ctl_flush_tlb(uc);
}

uc_err hb_flush_tb(uc_engine *uc)
{
	return uc_ctl_flush_tb(uc);
}

uc_err hb_set_cpu_model(uc_engine *uc, int model)
{
	return uc_ctl_set_cpu_model(uc, model);
}

// uc_reg_*_batch want an array of value pointers; building it here keeps
// Go memory free of pointers handed to C.
#define HB_CHUNK 32

uc_err hb_reg_read_batch(uc_engine *uc, int *regs, uint64_t *vals, int n)
{
	void *ptrs[HB_CHUNK];
	for (int off = 0; off < n; off += HB_CHUNK) {
		int c = n - off < HB_CHUNK ? n - off : HB_CHUNK;
		for (int i = 0; i < c; i++) {
			vals[off + i] = 0;
			ptrs[i] = &vals[off + i];
		}
		uc_err err = uc_reg_read_batch(uc, regs + off, ptrs, c);
		if (err != UC_ERR_OK) {
			return err;
		}
	}
	return UC_ERR_OK;
}

uc_err hb_reg_write_batch(uc_engine *uc, int *regs, uint64_t *vals, int n)
{
	void *ptrs[HB_CHUNK];
	for (int off = 0; off < n; off += HB_CHUNK) {
		int c = n - off < HB_CHUNK ? n - off : HB_CHUNK;
		for (int i = 0; i < c; i++) {
			ptrs[i] = &vals[off + i];
		}
		uc_err err = uc_reg_write_batch(uc, regs + off, (void *const *)ptrs, c);
		if (err != UC_ERR_OK) {
			return err;
		}
	}
	return UC_ERR_OK;
}

static inline uint32_t pcset_slot(const hb_pcset *s, uint64_t pc, uint64_t addr)
{
	uint64_t h = (pc ^ (addr * 0x9e3779b97f4a7c15ull)) * 0xff51afd7ed558ccdull;
	return (uint32_t)(h >> 32) & (s->cap - 1);
}

hb_pcset *hb_pcset_new(uint32_t cap, uintptr_t id)
{
	hb_pcset *s = calloc(1, sizeof(*s));
	if (!s)
		return NULL;
	s->pc = calloc(cap, sizeof(uint64_t));
	s->addr = calloc(cap, sizeof(uint64_t));
	s->hits = calloc(cap, sizeof(uint64_t));
	if (!s->pc || !s->addr || !s->hits) {
		hb_pcset_free(s);
		return NULL;
	}
	s->cap = cap;
	s->id = id;
	return s;
}

void hb_pcset_free(hb_pcset *s)
{
	if (!s)
		return;
	free(s->pc);
	free(s->addr);
	free(s->hits);
	free(s);
}

// hb_pcset_add returns 0 when the pair is in the set afterwards, -1 when the set is too full
// (kept at most half full so probes stay short).
int hb_pcset_add(hb_pcset *s, uint64_t pc, uint64_t addr)
{
	if (pc == 0)
		return -1;
	if (s->len * 2 >= s->cap)
		return -1;
	for (uint32_t i = pcset_slot(s, pc, addr);; i = (i + 1) & (s->cap - 1)) {
		if (s->pc[i] == pc && s->addr[i] == addr)
			return 0;
		if (s->pc[i] == 0) {
			s->pc[i] = pc;
			s->addr[i] = addr;
			s->len++;
			return 0;
		}
	}
}

void hb_pcset_clear(hb_pcset *s)
{
	memset(s->pc, 0, s->cap * sizeof(uint64_t));
	memset(s->hits, 0, s->cap * sizeof(uint64_t));
	s->len = 0;
}

// pcset_find returns the pair's slot, or -1.
static inline int64_t pcset_find(const hb_pcset *s, uint64_t pc, uint64_t addr)
{
	for (uint32_t i = pcset_slot(s, pc, addr);; i = (i + 1) & (s->cap - 1)) {
		if (s->pc[i] == 0)
			return -1;
		if (s->pc[i] == pc && s->addr[i] == addr)
			return i;
	}
}

static inline int spans_have(const hb_spans *sp, uint64_t addr)
{
	uint32_t lo = 0, hi = sp->n;
	while (lo < hi) { // the first span whose end is at or above addr
		uint32_t mid = (lo + hi) / 2;
		if (sp->hi[mid] < addr)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo < sp->n && sp->lo[lo] <= addr;
}

static void cb_mem_filtered(uc_engine *uc, uc_mem_type type, uint64_t addr, int size,
                            int64_t value, void *ud)
{
	const hb_spans *sp = ud;
	if (!spans_have(sp, addr))
		return;
	hb_pcset *s = sp->target;
	uint64_t pc = 0;
	if (uc_reg_read(uc, UC_X86_REG_RIP, &pc) != UC_ERR_OK)
		pc = 0;
	int64_t i;
	if (s->len && pc && (i = pcset_find(s, pc, addr)) >= 0) {
		s->hits[i]++;
		s->skipped++;
		return;
	}
	s->passed++;
	s->last_pc = pc;
	hbGoMem(s->id, (int)type, addr, size, value);
}

uc_err hb_mem_filtered_add(uc_engine *uc, uc_hook *hh, int type, hb_spans *sp)
{
	if (sp->n == 0 || sp->n > HB_MAX_SPANS)
		return UC_ERR_ARG;
	return uc_hook_add(uc, hh, type, (void *)cb_mem_filtered, sp, sp->lo[0], sp->hi[sp->n - 1]);
}

static void cb_mem_gated(uc_engine *uc, uc_mem_type type, uint64_t addr, int size,
                         int64_t value, void *ud)
{
	const hb_spans *sp = ud;
	hb_gate *g = sp->target;
	if (g->open && spans_have(sp, addr))
		hbGoMem(g->id, (int)type, addr, size, value);
}

uc_err hb_mem_gated_add(uc_engine *uc, uc_hook *hh, int type, hb_spans *sp)
{
	if (sp->n == 0 || sp->n > HB_MAX_SPANS)
		return UC_ERR_ARG;
	return uc_hook_add(uc, hh, type, (void *)cb_mem_gated, sp, sp->lo[0], sp->hi[sp->n - 1]);
}

hb_writelog *hb_writelog_new(uint64_t base, uint64_t pages)
{
	hb_writelog *w = calloc(1, sizeof(*w));
	if (!w)
		return NULL;
	w->seen = calloc(pages, 1);
	w->list = calloc(pages, sizeof(uint64_t));
	if (!w->seen || !w->list) {
		hb_writelog_free(w);
		return NULL;
	}
	w->base = base;
	w->pages = pages;
	return w;
}

void hb_writelog_free(hb_writelog *w)
{
	if (!w)
		return;
	free(w->seen);
	free(w->list);
	free(w);
}

void hb_writelog_mark(hb_writelog *w, uint64_t addr, uint64_t size)
{
	if (addr < w->base || size == 0)
		return;
	uint64_t first = (addr - w->base) >> 12, last = (addr - w->base + size - 1) >> 12;
	for (uint64_t p = first; p <= last && p < w->pages; p++) {
		if (!w->seen[p]) {
			w->seen[p] = 1;
			w->list[w->len++] = p;
		}
	}
}

static void cb_mem_writelog(uc_engine *uc, uc_mem_type type, uint64_t addr, int size,
                            int64_t value, void *ud)
{
	hb_writelog_mark(ud, addr, (uint64_t)size);
}

uc_err hb_writelog_add(uc_engine *uc, uc_hook *hh, hb_writelog *w, uint64_t begin, uint64_t end)
{
	return uc_hook_add(uc, hh, UC_HOOK_MEM_WRITE, (void *)cb_mem_writelog, w, begin, end);
}
