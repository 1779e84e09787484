// Device memory for tensors and scratch: a size-keyed cache of freed blocks on top of
// cudaMalloc / cudaFree (host malloc in the emulation build). A training step allocates the same
// shapes every step, and cudaMalloc / cudaFree synchronise the device, so freed blocks are kept
// and handed to the next request of the same (rounded) size. All work runs on the default stream,
// so a block freed after its last use was enqueued is safe to reuse for later work. Counters for
// the leak test: live bytes (handed out) and cached bytes (free, kept).
#include <cstdlib>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels.h"

namespace mlc {
namespace {
std::map<size_t, std::vector<void*>> g_free;
size_t g_live = 0, g_cached = 0, g_liveBlocks = 0;
size_t g_cap = [] {
  const char* env = std::getenv("MOELAB_CUDA_POOL_MB");
  return env && *env ? static_cast<size_t>(std::strtoull(env, nullptr, 10)) << 20 : static_cast<size_t>(8) << 30;
}();

size_t rounded(size_t bytes) { return (bytes + 511) & ~static_cast<size_t>(511); }
}  // namespace

void release_cached() {
  for (auto& [size, list] : g_free)
    for (void* p : list) raw_free(p);
  g_free.clear();
  g_cached = 0;
}

void* pool_alloc(size_t bytes) {
  const size_t n = rounded(bytes);
  auto it = g_free.find(n);
  void* p = nullptr;
  if (it != g_free.end() && !it->second.empty()) {
    p = it->second.back();
    it->second.pop_back();
    g_cached -= n;
  } else {
    try {
      p = raw_alloc(n);
    } catch (const std::runtime_error&) {
      if (g_cached == 0) throw;
      synchronize();
      release_cached();  // out of memory with blocks cached: give them back and retry once
      p = raw_alloc(n);
    }
  }
  g_live += n;
  g_liveBlocks++;
  return p;
}

void pool_free(void* p, size_t bytes) {
  if (!p) return;
  const size_t n = rounded(bytes);
  g_live -= n;
  g_liveBlocks--;
  if (g_cached + n > g_cap) {
    raw_free(p);
    return;
  }
  g_free[n].push_back(p);
  g_cached += n;
}

void pool_stats(size_t* live, size_t* cached, size_t* blocks) {
  *live = g_live;
  *cached = g_cached;
  *blocks = g_liveBlocks;
}
}  // namespace mlc
