# The MagicMind backend (included by Makefile). See docs/magicmind.md.
#
#   make mm-compile-check   backend sources compiled against the declaration header (compile-only
#                           check), -Wall -Wextra -Werror: x86_64 g++ (default C++11 ABI and
#                           _GLIBCXX_USE_CXX11_ABI=0) and aarch64 (Debian's g++-aarch64-linux-gnu,
#                           or gcc-linaro under TOOLCHAIN_ROOT when that exists)
#   make fake-neuware       the TEST-ONLY fake Neuware tree built and installed as a prefix
#                           (build/fake-neuware: include/, lib64/); never shipped
#   make mm-test            librefit_backend_magicmind.so + its C++ tests built with
#                           NEUWARE_HOME=build/fake-neuware, run by ctest (seed stress under
#                           quiesce / ab / test-only unguarded)
#   make mm-plugin          the plugin alone against a real SDK: NEUWARE_HOME=/usr/local/neuware
#                           [MM_LAYOUT=host|edge] [MM_CXX11_ABI=0|1] [MM_TOOLCHAIN=toolchain/aarch64-linaro.cmake]
#   make mm-sanitize        the plugin, librefit and those tests under ASan+UBSan and under TSan
#   make mm-edge-test       the same for aarch64 in the edge layout, run under qemu
#   make mm-ci              mm-compile-check + mm-test + mm-edge-test (the CI step, in make test-all;
#                           mm-sanitize builds librefit twice more, so it is run by hand)

FAKE_NEUWARE := $(CURDIR)/build/fake-neuware
MM_CROSS_CXX := $(if $(and $(TOOLCHAIN_ROOT),$(wildcard $(TOOLCHAIN_ROOT)/bin/aarch64-linux-gnu-g++)),$(TOOLCHAIN_ROOT)/bin/aarch64-linux-gnu-g++,aarch64-linux-gnu-g++)
MM_LAYOUT ?= auto
MM_CXX11_ABI ?=
MM_BUILD ?= build/mm-plugin

.PHONY: mm-compile-check fake-neuware mm-test mm-plugin mm-ci

mm-compile-check:
	@VENV=$(VENV) $(ENSURE) mm
	toolchain/mm_compile_check.sh g++
	toolchain/mm_compile_check.sh g++ native/tests/fake_neuware/include -D_GLIBCXX_USE_CXX11_ABI=0
	toolchain/mm_compile_check.sh $(MM_CROSS_CXX)

fake-neuware:
	cmake -S native/tests/fake_neuware -B build/fake-neuware-build -DCMAKE_INSTALL_PREFIX=$(FAKE_NEUWARE) >/dev/null
	cmake --build build/fake-neuware-build -j$(JOBS)
	cmake --install build/fake-neuware-build >/dev/null

mm-test: fake-neuware
	NEUWARE_HOME=$(FAKE_NEUWARE) cmake -S native/backends/magicmind -B build/mm -DREFIT_MM_TESTS=ON >/dev/null
	cmake --build build/mm -j$(JOBS)
	ctest --test-dir build/mm --output-on-failure

mm-plugin:
	@test -n "$(NEUWARE_HOME)" || { echo "mm-plugin: set NEUWARE_HOME to the Neuware SDK (e.g. /usr/local/neuware)" >&2; exit 2; }
	NEUWARE_HOME=$(NEUWARE_HOME) cmake -S native/backends/magicmind -B $(MM_BUILD) -DREFIT_MM_LAYOUT=$(MM_LAYOUT) \
	  -DREFIT_MM_CXX11_ABI=$(MM_CXX11_ABI) $(if $(MM_TOOLCHAIN),--toolchain $(CURDIR)/$(MM_TOOLCHAIN)) >/dev/null
	cmake --build $(MM_BUILD) -j$(JOBS) --target refit_backend_magicmind
	@file -L $(MM_BUILD)/librefit_backend_magicmind.so

mm-ci: mm-compile-check mm-test mm-edge-test

# The edge layout end to end: the fake Neuware cross-built for aarch64 under
# build/fake-neuware-aarch64/edge (the SDK's $NEUWARE_HOME/edge), the plugin and its tests built
# with Debian's aarch64 g++ (toolchain/aarch64-linux-gnu-gcc.cmake, so REFIT_MM_LAYOUT=auto picks
# edge), the tests run under qemu-aarch64 by ctest. With the vendor's gcc-linaro 6.2.1 use
# MM_EDGE_TOOLCHAIN=toolchain/aarch64-linaro.cmake (TOOLCHAIN_ROOT).
FAKE_NEUWARE_ARM := $(CURDIR)/build/fake-neuware-aarch64
MM_EDGE_TOOLCHAIN ?= toolchain/aarch64-linux-gnu-gcc.cmake
MM_EDGE_INFERENCES ?= 20000

.PHONY: mm-edge-test
mm-edge-test:
	@VENV=$(VENV) $(ENSURE) qemu mm
	cmake -S native/tests/fake_neuware -B build/fake-neuware-aarch64-build --toolchain $(CURDIR)/$(MM_EDGE_TOOLCHAIN) \
	  -DCMAKE_INSTALL_PREFIX=$(FAKE_NEUWARE_ARM)/edge >/dev/null
	cmake --build build/fake-neuware-aarch64-build -j$(JOBS)
	cmake --install build/fake-neuware-aarch64-build >/dev/null
	NEUWARE_HOME=$(FAKE_NEUWARE_ARM) cmake -S native/backends/magicmind -B build/mm-aarch64 \
	  --toolchain $(CURDIR)/$(MM_EDGE_TOOLCHAIN) -DREFIT_MM_TESTS=ON >/dev/null
	cmake --build build/mm-aarch64 -j$(JOBS)
	@file -L build/mm-aarch64/librefit_backend_magicmind.so
	MM_STRESS_INFERENCES=$(MM_EDGE_INFERENCES) ctest --test-dir build/mm-aarch64 --output-on-failure

# The plugin, librefit and the C++ tests under ASan+UBSan (leaks too) and under TSan, 20k inferences.
.PHONY: mm-sanitize
mm-sanitize: fake-neuware
	@set -e; for s in address,undefined thread; do \
	  b=build/mm-$$(echo $$s | cut -c1-4); \
	  NEUWARE_HOME=$(FAKE_NEUWARE) cmake -S native/backends/magicmind -B $$b -DREFIT_MM_TESTS=ON \
	    -DREFIT_SANITIZE=$$s -DCMAKE_BUILD_TYPE=Debug >/dev/null; \
	  cmake --build $$b -j$(JOBS); \
	  MM_STRESS_INFERENCES=20000 ASAN_OPTIONS=detect_leaks=1 TSAN_OPTIONS=halt_on_error=1 \
	    ctest --test-dir $$b --output-on-failure; \
	done
