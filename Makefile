# refitd — top-level entry points. The README's two commands are scripts/demo.sh and scripts/test.sh
# (they install what make itself needs first); `make demo` / `make test` do the same once set up.
VENV ?= .venv
PY := $(VENV)/bin/python
JOBS ?= 2

.PHONY: setup demo test test-all test-native test-asan test-tsan test-python fuzz soak lsan clean

setup:
	@scripts/setup.sh

# The daemon on the reference backend with the bundled demo model, showing live refits.
demo: setup
	$(VENV)/bin/refitd demo

test: setup
	@$(MAKE) --no-print-directory test-all

# Order matters: cross-test/glibc-check install ziglang into the venv that test_edge.py uses.
# edge-ci ends with the full arm64-root proof (cached under .cache/edge-root after its first run).
test-all: test-native test-asan test-tsan mm-ci cross-test glibc-check test-python edge-ci

# C tests: native, then under ASan+UBSan, then under TSan (each its own build tree).
test-native:
	cmake -S native -B build/native -DCMAKE_BUILD_TYPE=Release >/dev/null
	cmake --build build/native -j$(JOBS)
	ctest --test-dir build/native --output-on-failure

test-asan:
	cmake -S native -B build/asan -DCMAKE_BUILD_TYPE=Debug -DREFIT_SANITIZE=address,undefined >/dev/null
	cmake --build build/asan -j$(JOBS)
	ASAN_OPTIONS=detect_leaks=1 ctest --test-dir build/asan --output-on-failure

test-tsan:
	cmake -S native -B build/tsan -DCMAKE_BUILD_TYPE=Debug -DREFIT_SANITIZE=thread >/dev/null
	cmake --build build/tsan -j$(JOBS)
	TSAN_OPTIONS=halt_on_error=1 ctest --test-dir build/tsan --output-on-failure

test-python:
	$(PY) -m pytest -q -m "not edge and not slow" tests

# Long runs (not in test-all): the property tests at 20,000 examples each plus the slow fuzzing
# tests; the soak for 30 minutes; the native refit loop under LeakSanitizer.
fuzz:
	HYPOTHESIS_PROFILE=long REFITD_LONG=1 $(PY) -m pytest -q tests/test_properties.py tests/test_hostile_corpus.py
	REFITD_LONG=1 $(PY) -m pytest -q -m slow tests/test_package.py

soak:
	$(PY) bench/soak.py --minutes 30

lsan:
	cmake -S native -B build/asan -DCMAKE_BUILD_TYPE=Debug -DREFIT_SANITIZE=address,undefined >/dev/null
	cmake --build build/asan -j$(JOBS)
	ASAN_OPTIONS=detect_leaks=1 REFIT_STRESS_INFERENCES=200000 build/asan/test_refit_stress

clean:
	rm -rf build dist

# Cross-compilation, bundles and the arm64-root proof live in toolchain/cross.mk.
-include toolchain/cross.mk
# The MagicMind backend: compile check, test-only fake Neuware, plugin tests (toolchain/magicmind.mk).
-include toolchain/magicmind.mk
