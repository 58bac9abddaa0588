# x86_64-linux-gnu with zig cc (PyPI package `ziglang`, run as python -m ziglang), pinned to glibc
# 2.17: the release build. The library needs no glibc symbol newer than GLIBC_2.17, so it loads on
# Ubuntu 16.04/18.04 and CentOS 7 (check: make glibc-check). Needs `pip install ziglang` in the
# project venv (make cross/bundle do it) or REFIT_ZIG_PYTHON pointing at a python that has it.
#   cmake -S native -B build/zig-x86_64 --toolchain toolchain/zig-x86_64.cmake
# Another glibc floor: export REFIT_GLIBC=2.28 (read by the wrapper at every compile).
set(REFIT_TARGET_ARCH x86_64)
# zig cc emits DWARF even without -g; -g0 first, so a Debug build's later -g still wins.
set(CMAKE_C_FLAGS_INIT "-g0")
set(CMAKE_C_COMPILER ${CMAKE_CURRENT_LIST_DIR}/bin/zig-cc-x86_64)
set(CMAKE_AR ${CMAKE_CURRENT_LIST_DIR}/bin/zig-ar CACHE FILEPATH "archiver (zig ar)")
set(CMAKE_RANLIB ${CMAKE_CURRENT_LIST_DIR}/bin/zig-ranlib CACHE FILEPATH "ranlib (zig ranlib)")
# zig brings its own libc headers and stubs: there is no target root to search.
include(${CMAKE_CURRENT_LIST_DIR}/common.cmake)
