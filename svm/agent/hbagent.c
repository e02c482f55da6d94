/*
 * hbagent: the process inside the secure VM (SVM) whose system calls hybridbridge takes over.
 *
 * It maps and touches a buffer (so its pages are present and stay so), prints where it is, then
 * loops on a marker system call: getppid(MAGIC, buffer, size, tsc). getppid ignores its arguments,
 * so the loop has no effect; the arguments only let a breakpoint at the kernel's syscall entry
 * recognise this process and learn the buffer's address and the guest's time stamp counter at
 * that moment. hybridbridge snapshots the VM there and injects its own system calls in place of
 * getppid, with paths and output buffers in the agent's buffer.
 *
 * Built static by scripts/setup.sh (gcc -static), so the SVM image needs no libc.
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#define MAGIC 0x6879627269646765ULL /* "hybridge" */
#define BUFSZ (1 << 20)

static inline uint64_t rdtsc(void)
{
	uint32_t lo, hi;
	__asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
	return ((uint64_t)hi << 32) | lo;
}

int main(void)
{
	char *buf = mmap(NULL, BUFSZ, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
	if (buf == MAP_FAILED) {
		perror("hbagent: mmap");
		return 1;
	}
	memset(buf, 0, BUFSZ);
	if (mlock(buf, BUFSZ) != 0)
		perror("hbagent: mlock (continuing)");
	printf("hbagent: pid %d buffer %p size %d magic %#llx\n", getpid(), (void *)buf, BUFSZ,
	       (unsigned long long)MAGIC);
	fflush(stdout);
	for (;;)
		syscall(SYS_getppid, MAGIC, buf, BUFSZ, rdtsc());
}
