{
  "targets": [
    {
      "target_name": "afpacket_build_deps",
      "type": "none",
      "actions": [
        {
          "action_name": "check_build_deps",
          "inputs": ["native/check-build-deps.sh"],
          "outputs": ["<(PRODUCT_DIR)/afpacket-build-deps.ok"],
          "action": ["sh", "native/check-build-deps.sh", "<(PRODUCT_DIR)/afpacket-build-deps.ok"]
        }
      ]
    },
    {
      "target_name": "shadowvm_afpacket",
      "dependencies": ["afpacket_build_deps"],
      "sources": ["native/afpacket.c"],
      "cflags": ["-std=gnu11", "-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
      "defines": ["NAPI_VERSION=8"]
    },
    {
      "target_name": "shadowvm_peercred",
      "dependencies": ["afpacket_build_deps"],
      "sources": ["native/peercred.c"],
      "cflags": ["-std=gnu11", "-O2", "-Wall", "-Wextra"],
      "defines": ["NAPI_VERSION=8"]
    },
    {
      "target_name": "shadowvm_linkwatch",
      "dependencies": ["afpacket_build_deps"],
      "sources": ["native/linkwatch.c"],
      "cflags": ["-std=gnu11", "-O2", "-Wall", "-Wextra"],
      "defines": ["NAPI_VERSION=8"]
    }
  ]
}
