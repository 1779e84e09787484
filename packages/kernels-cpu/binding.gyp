{
  "variables": {
    "moelab_blas%": "<!(node scripts/detect-blas.mjs)"
  },
  "targets": [
    {
      "target_name": "moelab_cpu",
      "sources": [
        "src/native/addon.cc",
        "src/native/attention.cc",
        "src/native/gemm.cc",
        "src/native/kernels.cc",
        "src/native/moe.cc",
        "src/native/moe_glu.cc",
        "src/native/norm.cc",
        "src/native/pool.cc",
        "src/native/router.cc",
        "src/native/quant.cc"
      ],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": ["NAPI_VERSION=8", "NAPI_CPP_EXCEPTIONS"],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions", "-fno-rtti"],
      "cflags_cc": ["-O3", "-march=native", "-ffp-contract=fast", "-fexceptions", "-std=gnu++17"],
      "ldflags": ["-pthread"],
      "conditions": [
        ["moelab_blas=='openblas'", {
          "defines": ["MOELAB_HAVE_OPENBLAS=1"],
          "libraries": ["-lopenblas"]
        }]
      ]
    }
  ]
}
