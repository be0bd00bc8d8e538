{
  "variables": {
    "llmcore_cflags": ["-O3", "-fno-math-errno", "-fno-trapping-math", "-fvisibility=hidden", "-pthread"]
  },
  "targets": [
    {
      "target_name": "llmcore_isa_avx2",
      "type": "static_library",
      "sources": ["<!@(cat native/sources/avx2.txt)"],
      "include_dirs": ["native"],
      "cflags_cc": ["<@(llmcore_cflags)", "-std=c++17", "-fPIC", "-mavx2", "-mfma", "-mf16c"],
      "cflags_cc!": ["-fno-exceptions", "-O2", "-O0"]
    },
    {
      "target_name": "llmcore_isa_avx512",
      "type": "static_library",
      "sources": ["<!@(cat native/sources/avx512.txt)"],
      "include_dirs": ["native"],
      "cflags_cc": ["<@(llmcore_cflags)", "-std=c++17", "-fPIC", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx512bf16", "-mfma", "-mf16c", "-Wno-uninitialized", "-Wno-maybe-uninitialized"],
      "cflags_cc!": ["-fno-exceptions", "-O2", "-O0"]
    },
    {
      "target_name": "llmcore_isa_amx",
      "type": "static_library",
      "sources": ["<!@(cat native/sources/amx.txt)"],
      "include_dirs": ["native"],
      "cflags_cc": ["<@(llmcore_cflags)", "-std=c++17", "-fPIC", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx512bf16", "-mamx-tile", "-mamx-bf16", "-mfma", "-mf16c"],
      "cflags_cc!": ["-fno-exceptions", "-O2", "-O0"]
    },
    {
      "target_name": "llmcore",
      "sources": ["<!@(cat native/sources/core.txt)", "<!@(cat native/sources/addon.txt)"],
      "dependencies": ["llmcore_isa_amx", "llmcore_isa_avx2", "llmcore_isa_avx512"],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")", "native"],
      # SWALLOW_UNTHROWABLE: on a worker thread being terminated napi_throw fails, and without it
      # node-addon-api throws again out of its C callback, which aborts the whole process.
      "defines": ["NAPI_VERSION=8", "NODE_ADDON_API_DISABLE_DEPRECATED", "NAPI_CPP_EXCEPTIONS", "NODE_API_SWALLOW_UNTHROWABLE_EXCEPTIONS"],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions", "-fno-rtti", "-O2", "-O0"],
      "cflags_cc": ["<@(llmcore_cflags)", "-std=c++17", "-fexceptions"],
      "ldflags": ["-pthread", "-ldl"]
    }
  ]
}
