# aarch64 with Debian/Ubuntu's cross gcc (apt-get install gcc-aarch64-linux-gnu): the quick dev
# loop. Its glibc is the host distribution's (2.36 on Debian 12), so a library built with it may
# need symbols newer than the edge boxes have; release builds use zig-aarch64.cmake.
#   cmake -S native -B build/cross-aarch64 --toolchain toolchain/aarch64-linux-gnu-gcc.cmake
set(REFIT_TARGET_ARCH aarch64)
set(REFIT_CROSS_PREFIX aarch64-linux-gnu-)
set(CMAKE_C_COMPILER ${REFIT_CROSS_PREFIX}gcc)
find_program(_refit_cxx ${REFIT_CROSS_PREFIX}g++)
if(_refit_cxx)
  set(CMAKE_CXX_COMPILER ${_refit_cxx})
endif()
if(NOT DEFINED CMAKE_FIND_ROOT_PATH)
  set(CMAKE_FIND_ROOT_PATH /usr/aarch64-linux-gnu)
endif()
include(${CMAKE_CURRENT_LIST_DIR}/common.cmake)
