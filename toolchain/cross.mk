# Cross-compilation, glibc floor, offline bundles and the arm64-root proof (included by Makefile).
#
#   make cross          librefit + C tests for aarch64 (zig cc, glibc 2.17) in build/cross-aarch64
#   make cross-test     run those tests under qemu-aarch64 through plain ctest
#   make glibc-check    build the release librefit for aarch64 and x86_64, fail if either needs
#                       a glibc symbol newer than GLIBC_2.17
#   make bundle ARCH=aarch64|x86_64   dist/refitd-<version>-linux-<arch>.tar.gz (offline install);
#                       MM_PLUGIN=<librefit_backend_magicmind.so> adds the MagicMind plugin
#   make edge-root      Debian 11 arm64 root under .cache/edge-root/ (built once, then reused)
#   make edge-test      install the aarch64 bundle into that root offline and prove it works there
#   make bundle-smoke   the host-arch (x86_64) bundle installed offline in build/bundle-smoke + seed demo
#   make edge-ci        cross-test + glibc-check + bundle-smoke + edge-test (the CI step)
#
# Knobs: CROSS_TC=zig|gcc|linaro (toolchain for make cross; linaro needs TOOLCHAIN_ROOT),
#        GLIBC_MAX=2.17, BUNDLE_PYTHONS="3.9 3.10 3.11 3.12", EDGE_SUITE=bullseye.
# Every tool is installed on first use (apt for gcc/qemu/debootstrap, pip for ziglang in $(VENV)).

CROSS_TC ?= zig
GLIBC_MAX ?= 2.17
ARCH ?= aarch64
BUNDLE_PYTHONS ?= 3.9 3.10 3.11 3.12
EDGE_SUITE ?= bullseye
EDGE_ROOT ?= .cache/edge-root/$(EDGE_SUITE)-arm64
EDGE_TIMINGS ?= dist/edge-timings$(if $(filter-out bullseye,$(EDGE_SUITE)),-$(EDGE_SUITE)).json
REFIT_VERSION := $(shell sed -n 's/^version *= *"\(.*\)"/\1/p' pyproject.toml | head -1)

CROSS_TOOLCHAIN_zig := $(CURDIR)/toolchain/zig-aarch64.cmake
CROSS_TOOLCHAIN_gcc := $(CURDIR)/toolchain/aarch64-linux-gnu-gcc.cmake
CROSS_TOOLCHAIN_linaro := $(CURDIR)/toolchain/aarch64-linaro.cmake
CROSS_BUILD := build/cross-aarch64$(if $(filter-out zig,$(CROSS_TC)),-$(CROSS_TC))
ENSURE := toolchain/ensure_tools.sh

.PHONY: cross cross-test glibc-check release-lib bundle bundle-all edge-root edge-test edge-ci bundle-smoke cross-tools

# Tools for qemu runs (qemu + the aarch64 loader/libc for -L), the chosen compiler, and always
# gcc-aarch64-linux-gnu: tests/test_edge.py builds with it whatever CROSS_TC is.
cross-tools:
	@VENV=$(VENV) $(ENSURE) qemu gcc $(CROSS_TC)

cross: cross-tools
	cmake -S native -B $(CROSS_BUILD) --toolchain $(CROSS_TOOLCHAIN_$(CROSS_TC)) \
	  -DCMAKE_BUILD_TYPE=Release -DREFIT_BUILD_TESTS=ON >/dev/null
	cmake --build $(CROSS_BUILD) -j$(JOBS)
	@file -L $(CROSS_BUILD)/librefit.so $(CROSS_BUILD)/test_refit_stress

cross-test: cross
	ctest --test-dir $(CROSS_BUILD) --output-on-failure

# Release libraries: zig cc pinned to glibc 2.17, no tests, stripped of debug info.
release-lib:
	@VENV=$(VENV) $(ENSURE) zig
	@set -e; for a in aarch64 x86_64; do \
	  cmake -S native -B build/release-$$a --toolchain $(CURDIR)/toolchain/zig-$$a.cmake \
	    -DCMAKE_BUILD_TYPE=Release -DREFIT_BUILD_TESTS=OFF >/dev/null; \
	  cmake --build build/release-$$a -j$(JOBS); \
	done

glibc-check: release-lib
	python3 toolchain/check_glibc.py --max $(GLIBC_MAX) build/release-aarch64/librefit.so build/release-x86_64/librefit.so \
	  $(wildcard dist/refitd-$(REFIT_VERSION)-py3-none-manylinux*.whl)

bundle:
	@VENV=$(VENV) $(ENSURE) zig
	VENV=$(VENV) GLIBC_MAX=$(GLIBC_MAX) BUNDLE_PYTHONS="$(BUNDLE_PYTHONS)" JOBS=$(JOBS) MM_PLUGIN=$(MM_PLUGIN) \
	  toolchain/bundle.sh $(ARCH)

bundle-all:
	$(MAKE) bundle ARCH=aarch64
	$(MAKE) bundle ARCH=x86_64

edge-root:
	@EDGE_SUITE=$(EDGE_SUITE) toolchain/edge_root.sh $(EDGE_ROOT)

# The full proof: bundle -> offline install in the arm64 root -> engine tests, seed demo, pack/apply.
edge-test: edge-root cross
	$(MAKE) bundle ARCH=aarch64
	EDGE_ROOT=$(EDGE_ROOT) EDGE_TIMINGS=$(EDGE_TIMINGS) EDGE_LOGDIR=build/edge-test-$(EDGE_SUITE) VENV=$(VENV) \
	  toolchain/edge_test.sh dist/refitd-$(REFIT_VERSION)-linux-aarch64.tar.gz

# For CI (needs root and the Debian + PyPI registries): everything this file proves, in one go.
# Cold ~8-12 min on 2 cores (arm64 root 3-7 min, zig caches ~1 min); ~3 min with .cache/ kept.
edge-ci: cross-test glibc-check bundle-smoke
	$(MAKE) edge-test

# The host-architecture bundle, installed offline into build/bundle-smoke and run (seed demo).
HOST_ARCH := $(shell uname -m)
bundle-smoke:
	$(MAKE) bundle ARCH=$(HOST_ARCH)
	toolchain/bundle_smoke.sh dist/refitd-$(REFIT_VERSION)-linux-$(HOST_ARCH).tar.gz
