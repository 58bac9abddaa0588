# Shared part of refitd's Linux cross toolchain files (included by them; not a toolchain itself).
# Before including, a file sets REFIT_TARGET_ARCH (aarch64 | x86_64).
#
# Overridable on the command line (-D...) or, for the paths, from the environment:
#   CMAKE_FIND_ROOT_PATH_MODE_{PROGRAM,LIBRARY,INCLUDE,PACKAGE}
#                         defaults NEVER / ONLY / ONLY / ONLY (programs from the host, the rest
#                         from the target's root), the ncnn habit: the user can override each.
#   REFIT_QEMU_SYSROOT    the -L root qemu-user uses to find the aarch64 dynamic loader and libc
#                         when ctest runs cross-built tests (default /usr/aarch64-linux-gnu,
#                         Debian's libc6-arm64-cross; its glibc is newer than 2.17, so it runs
#                         binaries linked for 2.17 too).
#   REFIT_QEMU            the emulator (default qemu-aarch64-static).
#   NEUWARE_HOME          Cambricon Neuware; if set, $NEUWARE_HOME/edge is added to the find
#                         root so the (future) MagicMind backend finds include/ and lib64/.

set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR ${REFIT_TARGET_ARCH})

# try_compile projects re-read the toolchain file; hand them our settings.
list(APPEND CMAKE_TRY_COMPILE_PLATFORM_VARIABLES
     TOOLCHAIN_ROOT REFIT_QEMU_SYSROOT REFIT_QEMU NEUWARE_HOME)

foreach(kind PROGRAM LIBRARY INCLUDE PACKAGE)
  if(kind STREQUAL "PROGRAM")
    set(_refit_default NEVER)
  else()
    set(_refit_default ONLY)
  endif()
  if(NOT DEFINED CMAKE_FIND_ROOT_PATH_MODE_${kind})
    set(CMAKE_FIND_ROOT_PATH_MODE_${kind} ${_refit_default})
  endif()
endforeach()

if(NOT DEFINED NEUWARE_HOME AND DEFINED ENV{NEUWARE_HOME})
  set(NEUWARE_HOME "$ENV{NEUWARE_HOME}")
endif()
if(NEUWARE_HOME AND EXISTS "${NEUWARE_HOME}/edge")
  list(APPEND CMAKE_FIND_ROOT_PATH "${NEUWARE_HOME}/edge")
endif()

if(REFIT_TARGET_ARCH STREQUAL "aarch64"
   AND NOT CMAKE_HOST_SYSTEM_PROCESSOR MATCHES "^(aarch64|arm64)$")
  if(NOT DEFINED REFIT_QEMU_SYSROOT)
    if(DEFINED ENV{REFIT_QEMU_SYSROOT})
      set(REFIT_QEMU_SYSROOT "$ENV{REFIT_QEMU_SYSROOT}")
    else()
      set(REFIT_QEMU_SYSROOT /usr/aarch64-linux-gnu)
    endif()
  endif()
  if(NOT DEFINED REFIT_QEMU)
    set(REFIT_QEMU qemu-aarch64-static)
  endif()
  # add_test() commands are run as: <emulator...> <test executable> (google/highway's pattern).
  set(CMAKE_CROSSCOMPILING_EMULATOR "${REFIT_QEMU};-L;${REFIT_QEMU_SYSROOT}")
endif()
