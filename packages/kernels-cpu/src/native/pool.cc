#include "pool.h"

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <mutex>
#include <thread>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
static inline void cpu_relax() { _mm_pause(); }
#else
static inline void cpu_relax() {}
#endif

namespace moelab {
namespace {

// How long a worker polls for new work before sleeping. Short on purpose: polling longer only
// pays off on an idle machine, and costs the other process a core on a busy one.
constexpr int kSpin = 4000;

MOELAB_THREAD_LOCAL bool tl_in_task = false;

// The ticket packs (generation << 40 | task count << 20 | next task index). A worker claims a task
// with one CAS on it, so the count it checks against and the generation it claims in are those of
// the same run. (An earlier version kept the count in a separate field: a worker that read a stale
// ticket and the next run's count could claim a task of a finished run, run the new job's task
// twice and push `done` past the count, which hung the caller. The suite on moelab-cpu hit it.)
// A successful claim also means the run cannot finish before this task does, so `job` is that run's.
constexpr int kIdxBits = 20;
constexpr uint64_t kIdxMask = (uint64_t{1} << kIdxBits) - 1;
constexpr int kMaxTasks = static_cast<int>(kIdxMask);

inline uint32_t gen_of(uint64_t t) { return static_cast<uint32_t>(t >> (2 * kIdxBits)); }
inline int count_of(uint64_t t) { return static_cast<int>((t >> kIdxBits) & kIdxMask); }
inline int idx_of(uint64_t t) { return static_cast<int>(t & kIdxMask); }

struct Pool {
  std::atomic<uint64_t> ticket{0};
  std::atomic<int> done{0};
  const std::function<void(int)>* job = nullptr;
  uint32_t gen = 0;

  std::mutex mu;
  std::condition_variable wake;
  std::condition_variable finished;
  std::mutex run_mu;  // one parallel_for at a time (Node worker threads may share the addon)
  std::vector<std::thread> workers;
  // Threads that take part in a parallel_for, the caller included: workers 1..active-1 run tasks,
  // the others stay parked (asleep). Shrinking the pool parks workers instead of ending them, so
  // growing it again never starts a thread: in WebAssembly a new thread needs a Web Worker, which
  // the browser or Node hands over only once the calling thread returns to its event loop, so a
  // thread started in the middle of synchronous work would sit idle until then.
  std::atomic<int> active{1};
  // Tasks run by the workers (not by a caller): whether the threads take part at all.
  std::atomic<long long> worker_tasks{0};

  // Claim and run tasks of generation g until none is left.
  void drain(uint32_t g, bool worker) {
    for (;;) {
      uint64_t t = ticket.load(std::memory_order_acquire);
      if (gen_of(t) != g) return;
      const int idx = idx_of(t), n = count_of(t);
      if (idx >= n) return;
      if (!ticket.compare_exchange_weak(t, t + 1, std::memory_order_acq_rel)) continue;
      (*job)(idx);
      if (worker) worker_tasks.fetch_add(1, std::memory_order_relaxed);
      if (done.fetch_add(1, std::memory_order_acq_rel) + 1 == n) {
        std::lock_guard<std::mutex> lk(mu);
        finished.notify_all();
      }
    }
  }

  // Worker `id` (1-based): claims tasks of each new run while id < active.
  void worker_main(int id) {
    tl_in_task = true;
    uint32_t seen = 0;
    for (;;) {
      uint32_t g = gen_of(ticket.load(std::memory_order_acquire));
      for (int s = 0; s < kSpin && g == seen; s++) {
        cpu_relax();
        g = gen_of(ticket.load(std::memory_order_acquire));
      }
      if (g == seen || id >= active.load(std::memory_order_acquire)) {
        std::unique_lock<std::mutex> lk(mu);
        wake.wait(lk, [&] { return gen_of(ticket.load()) != seen && id < active.load(); });
        g = gen_of(ticket.load());
      }
      seen = g;
      drain(g, true);
    }
  }

  // Called with run_mu held (no run in progress). Threads are started as needed and never ended.
  void resize(int total) {
    if (total < 1) total = 1;
#if defined(__EMSCRIPTEN__) && !defined(__EMSCRIPTEN_PTHREADS__)
    total = 1;  // a WebAssembly build without threads (kernels-wasm's single-threaded module)
#endif
    while (static_cast<int>(workers.size()) + 1 < total) {
      const int id = static_cast<int>(workers.size()) + 1;
      workers.emplace_back([this, id] { worker_main(id); });
    }
    std::lock_guard<std::mutex> lk(mu);
    active.store(total, std::memory_order_release);
  }

  void run(int n, const std::function<void(int)>& fn) {
    std::unique_lock<std::mutex> rl(run_mu, std::try_to_lock);
    if (!rl.owns_lock()) {
      for (int i = 0; i < n; i++) fn(i);
      return;
    }
    job = &fn;
    done.store(0, std::memory_order_relaxed);
    {
      std::lock_guard<std::mutex> lk(mu);
      gen = (gen + 1) & 0xffffffu;  // 24 bits of generation in the ticket
      ticket.store(static_cast<uint64_t>(gen) << (2 * kIdxBits) | static_cast<uint64_t>(n) << kIdxBits,
                   std::memory_order_release);
    }
    wake.notify_all();
    tl_in_task = true;
    drain(gen, false);
    tl_in_task = false;
    for (int s = 0; s < kSpin && done.load(std::memory_order_acquire) != n; s++) cpu_relax();
    if (done.load(std::memory_order_acquire) != n) {
      std::unique_lock<std::mutex> lk(mu);
      finished.wait(lk, [&] { return done.load(std::memory_order_acquire) == n; });
    }
    job = nullptr;
  }
};

int default_threads() {
  if (const char* e = std::getenv("MOELAB_THREADS")) {
    int v = std::atoi(e);
    if (v >= 1) return v;
  }
#if defined(__EMSCRIPTEN__)
  // Single-threaded build: no threads. Threaded build: one until the JavaScript loader sizes the
  // pool (set_pool_threads) to the Web Workers it started with the module, so that creating a
  // thread never waits for a Worker to load (which a blocked caller would wait for forever).
  return 1;
#endif
  unsigned hc = std::thread::hardware_concurrency();
  return hc == 0 ? 1 : static_cast<int>(hc);
}

// Never destroyed: joining threads from a static destructor at process exit races with Node's own
// teardown; the OS reclaims sleeping workers.
Pool* the_pool() {
  static Pool* p = [] {
    Pool* q = new Pool();
    q->resize(default_threads());
    return q;
  }();
  return p;
}

}  // namespace

long long pool_worker_tasks() { return the_pool()->worker_tasks.load(std::memory_order_relaxed); }

int pool_threads() { return the_pool()->active.load(std::memory_order_acquire); }

void set_pool_threads(int n) {
  Pool* p = the_pool();
  std::lock_guard<std::mutex> rl(p->run_mu);
  p->resize(n);
}

void parallel_for(int n, const std::function<void(int)>& fn) {
  if (n <= 0) return;
  Pool* p = the_pool();
  if (n == 1 || tl_in_task || p->active.load(std::memory_order_acquire) == 1) {
    for (int i = 0; i < n; i++) fn(i);
    return;
  }
  if (n > kMaxTasks) {
    // More tasks than a ticket can count: each claimed task runs a strided slice of them.
    p->run(kMaxTasks, [&](int t) {
      for (long i = t; i < n; i += kMaxTasks) fn(static_cast<int>(i));
    });
    return;
  }
  p->run(n, fn);
}

}  // namespace moelab
