// The CPU emulation of a CUDA launch grid (see compat.cuh). Threads are fibers: each has a private
// stack (64 KiB below a guard page), so locals and "registers" are per thread, and a
// __syncthreads() is a real barrier: the scheduler runs every ready thread of the block until it
// either finishes or arrives at the barrier, then releases the barrier only when all threads of the
// block arrived. A barrier that some threads of a block never reach (they returned early) is the
// classic divergent-__syncthreads bug: it is reported, not silently tolerated. Blocks run one after
// another on the calling OS thread, which also makes atomics trivially atomic.
//
// Switching: on x86-64 a dozen instructions of our own (save the callee-saved registers and the
// SSE / x87 control words on the old stack, swap stack pointers, restore): ~100x cheaper than
// ucontext's swapcontext, which makes a signal-mask system call on every switch. Elsewhere,
// ucontext.
#include <sys/mman.h>
#include <ucontext.h>

#include <cstdint>
#include <cstdio>
#include <stdexcept>
#include <string>
#include <vector>

#include "compat.cuh"

#if defined(__x86_64__) && !defined(MLC_EMU_UCONTEXT)
#define MLC_EMU_ASM_SWITCH 1
// mlc_emu_switch(save, to): saves the current context on its stack, stores that stack pointer in
// *save, and resumes the context whose stack pointer is `to`.
extern "C" void mlc_emu_switch(void** save, void* to);
asm(R"(
.text
.p2align 4
.globl mlc_emu_switch
.type mlc_emu_switch,@function
mlc_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
.size mlc_emu_switch,.-mlc_emu_switch
)");
#endif

namespace mlc_emu {
thread_local ThreadView view;

namespace {
constexpr size_t kStack = 64 * 1024;
constexpr size_t kGuard = 4096;
enum State { kReady, kAtBarrier, kDone };

struct Fiber {
#if defined(MLC_EMU_ASM_SWITCH)
  void* sp = nullptr;
#else
  ucontext_t ctx;
#endif
  char* mem = nullptr;  // guard page + stack
  State state = kReady;
  dim3 tid;
};

struct Scheduler {
#if defined(MLC_EMU_ASM_SWITCH)
  void* home = nullptr;
#else
  ucontext_t home;
#endif
  std::vector<Fiber> fibers;
  Fiber* current = nullptr;
  const std::function<void()>* body = nullptr;
  ~Scheduler() {
    for (auto& f : fibers)
      if (f.mem) munmap(f.mem, kStack + kGuard);
  }
  void ensure(size_t n) {
    while (fibers.size() < n) {
      fibers.emplace_back();
      void* m = mmap(nullptr, kStack + kGuard, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
      if (m == MAP_FAILED) throw std::runtime_error("moelab-cuda emulation: cannot map a thread stack");
      mprotect(m, kGuard, PROT_NONE);  // the stack grows down into the guard page: overflow faults
      fibers.back().mem = static_cast<char*>(m);
    }
  }
};
thread_local Scheduler sched;

#if defined(MLC_EMU_ASM_SWITCH)
[[noreturn]] void fiber_entry() {
  (*sched.body)();
  sched.current->state = kDone;
  mlc_emu_switch(&sched.current->sp, sched.home);
  __builtin_unreachable();  // a finished fiber is never resumed
}

// A fresh context whose first switch "returns" into fiber_entry: below the 16-byte aligned top,
// a zero fake return address (fiber_entry never returns), fiber_entry's address for `ret`, six
// zero callee-saved registers and the default MXCSR / x87 control words.
void init_fiber(Fiber& f) {
  auto top = reinterpret_cast<uintptr_t>(f.mem + kGuard + kStack) & ~static_cast<uintptr_t>(15);
  auto* s = reinterpret_cast<uint64_t*>(top);
  s[-1] = 0;
  s[-2] = reinterpret_cast<uint64_t>(&fiber_entry);
  for (int i = 3; i <= 8; i++) s[-i] = 0;
  s[-9] = 0x1F80ull | (0x037Full << 32);
  f.sp = &s[-9];
}
void enter(Fiber& f) { mlc_emu_switch(&sched.home, f.sp); }
#else
void fiber_entry() {
  (*sched.body)();
  sched.current->state = kDone;
  // uc_link returns to the scheduler.
}
void init_fiber(Fiber& f) {
  getcontext(&f.ctx);
  f.ctx.uc_stack.ss_sp = f.mem + kGuard;
  f.ctx.uc_stack.ss_size = kStack;
  f.ctx.uc_link = &sched.home;
  makecontext(&f.ctx, fiber_entry, 0);
}
void enter(Fiber& f) { swapcontext(&sched.home, &f.ctx); }
#endif
}  // namespace

void sync_threads() {
  Fiber* f = sched.current;
  f->state = kAtBarrier;
#if defined(MLC_EMU_ASM_SWITCH)
  mlc_emu_switch(&f->sp, sched.home);
#else
  swapcontext(&f->ctx, &sched.home);
#endif
}

void run_grid(dim3 grid, dim3 block, const std::function<void()>& body) {
  const size_t nt = static_cast<size_t>(block.x) * block.y * block.z;
  if (nt == 0 || static_cast<size_t>(grid.x) * grid.y * grid.z == 0) return;
  if (nt > 1024) throw std::runtime_error("moelab-cuda emulation: a block has at most 1024 threads, got " + std::to_string(nt));
  if (sched.body) throw std::runtime_error("moelab-cuda emulation: a launch inside a kernel");
  sched.ensure(nt);
  sched.body = &body;
  view.grid = grid;
  view.block = block;
  try {
    for (unsigned bz = 0; bz < grid.z; bz++)
      for (unsigned by = 0; by < grid.y; by++)
        for (unsigned bx = 0; bx < grid.x; bx++) {
          view.bid = dim3(bx, by, bz);
          for (size_t t = 0; t < nt; t++) {
            Fiber& f = sched.fibers[t];
            init_fiber(f);
            f.state = kReady;
            f.tid = dim3(t % block.x, (t / block.x) % block.y, t / (static_cast<size_t>(block.x) * block.y));
          }
          for (;;) {
            size_t waiting = 0, done = 0;
            for (size_t t = 0; t < nt; t++) {
              Fiber& f = sched.fibers[t];
              if (f.state == kReady) {
                sched.current = &f;
                view.tid = f.tid;
                enter(f);
              }
              if (f.state == kAtBarrier) waiting++;
              else done++;
            }
            if (waiting == 0) break;
            if (done > 0) {
              throw std::runtime_error("moelab-cuda emulation: __syncthreads() was not reached by all threads of block (" +
                                       std::to_string(view.bid.x) + "," + std::to_string(view.bid.y) + "," +
                                       std::to_string(view.bid.z) + ")");
            }
            for (size_t t = 0; t < nt; t++) sched.fibers[t].state = kReady;
          }
        }
  } catch (...) {
    sched.body = nullptr;
    sched.current = nullptr;
    throw;
  }
  sched.body = nullptr;
  sched.current = nullptr;
}
}  // namespace mlc_emu
