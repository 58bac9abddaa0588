# aarch64 with a vendor toolchain unpacked under TOOLCHAIN_ROOT, the way Cambricon's MagicMind edge
# samples do it: gcc-linaro-6.2.1-2016.11-x86_64_aarch64-linux-gnu, whose layout is
#   $TOOLCHAIN_ROOT/bin/aarch64-linux-gnu-gcc            the compiler
#   $TOOLCHAIN_ROOT/aarch64-linux-gnu/libc               its sysroot (glibc of the target)
#   export TOOLCHAIN_ROOT=/usr/local/gcc-linaro-6.2.1-2016.11-x86_64_aarch64-linux-gnu   # default
#   cmake -S native -B build/linaro --toolchain toolchain/aarch64-linaro.cmake
# TOOLCHAIN_ROOT may be given as -DTOOLCHAIN_ROOT=... or in the environment. A different prefix
# (e.g. aarch64-none-linux-gnu- of newer Arm toolchains) via -DREFIT_CROSS_PREFIX=...
# For MagicMind, also export NEUWARE_HOME (its edge runtime is $NEUWARE_HOME/edge).
set(REFIT_TARGET_ARCH aarch64)
if(NOT DEFINED TOOLCHAIN_ROOT)
  if(DEFINED ENV{TOOLCHAIN_ROOT})
    set(TOOLCHAIN_ROOT "$ENV{TOOLCHAIN_ROOT}")
  else()
    set(TOOLCHAIN_ROOT /usr/local/gcc-linaro-6.2.1-2016.11-x86_64_aarch64-linux-gnu)
  endif()
endif()
string(REGEX REPLACE "/+$" "" TOOLCHAIN_ROOT "${TOOLCHAIN_ROOT}")
if(NOT DEFINED REFIT_CROSS_PREFIX)
  set(REFIT_CROSS_PREFIX aarch64-linux-gnu-)
endif()
set(_refit_cc "${TOOLCHAIN_ROOT}/bin/${REFIT_CROSS_PREFIX}gcc")
if(NOT EXISTS "${_refit_cc}")
  message(FATAL_ERROR "aarch64-linaro.cmake: no compiler at ${_refit_cc}; set TOOLCHAIN_ROOT to "
                      "the unpacked gcc-linaro-...-x86_64_aarch64-linux-gnu directory")
endif()
set(CMAKE_C_COMPILER "${_refit_cc}")
if(EXISTS "${TOOLCHAIN_ROOT}/bin/${REFIT_CROSS_PREFIX}g++")
  set(CMAKE_CXX_COMPILER "${TOOLCHAIN_ROOT}/bin/${REFIT_CROSS_PREFIX}g++")
endif()
if(NOT DEFINED CMAKE_SYSROOT AND EXISTS "${TOOLCHAIN_ROOT}/aarch64-linux-gnu/libc")
  set(CMAKE_SYSROOT "${TOOLCHAIN_ROOT}/aarch64-linux-gnu/libc")
endif()
if(NOT DEFINED CMAKE_FIND_ROOT_PATH)
  set(CMAKE_FIND_ROOT_PATH "${TOOLCHAIN_ROOT}/aarch64-linux-gnu")
endif()
# qemu runs the tests against the toolchain's own target libc unless told otherwise.
if(NOT DEFINED REFIT_QEMU_SYSROOT AND NOT DEFINED ENV{REFIT_QEMU_SYSROOT} AND CMAKE_SYSROOT)
  set(REFIT_QEMU_SYSROOT "${CMAKE_SYSROOT}")
endif()
include(${CMAKE_CURRENT_LIST_DIR}/common.cmake)
