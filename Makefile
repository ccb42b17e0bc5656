# phasor: `make test` and `make bench` work from a fresh clone with no other step.
# They create .venv (seeing the interpreter's own packages, so a machine that already has torch
# and the build tools installs nothing), install only what is missing, build, and run.
SHELL  := /bin/bash -o pipefail
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
BUILD_STAMP := $(VENV)/.phasor-built
PIP_INSTALL := $(PY) -m pip install -q --disable-pip-version-check
export CMAKE_BUILD_PARALLEL_LEVEL ?= 2

.PHONY: all venv build test test-fast bench wheel cuda-check cuda-emu cuda-emu-strict cuda-profile repro clean

all: test

# When $(PYTHON) is itself a venv's interpreter (the GPU machine's python3 is), --system-site-packages
# would skip that venv's packages: inherit_venv.py adds them. A base interpreter without ensurepip
# gets a venv without pip, which then runs the parent venv's pip (installing into .venv).
$(PY):
	$(PYTHON) -m venv --system-site-packages $(VENV) || $(PYTHON) -m venv --without-pip --system-site-packages $(VENV)
	@$(PYTHON) tools/inherit_venv.py $(VENV)

# Install only what the environment lacks (the GPU machine has everything and no registry).
venv: $(PY)
	@req=$$($(PY) tools/missing_deps.py "$(TORCH_SPEC)" required); \
	if [ -n "$$req" ]; then echo "installing: $$req"; $(PIP_INSTALL) $$req; fi
	@opt=$$($(PY) tools/missing_deps.py "$(TORCH_SPEC)" optional); \
	if [ -n "$$opt" ]; then echo "installing optional: $$opt"; \
	  $(PIP_INSTALL) --retries 0 --timeout 15 $$opt || echo "optional packages unavailable ($$opt): the tests that need them will skip"; fi

build: venv
	$(PY) -m pip install -q --disable-pip-version-check --no-build-isolation --no-deps -e .
	@touch $(BUILD_STAMP)

test: build
	$(PY) -m pytest -q -ra tests

test-fast: build
	$(PY) -m pytest -q -ra -m "not slow" tests

bench: build
	$(PY) -m phasor bench --device cpu --json bench/results/cpu-latest.json | tee bench/results/cpu-latest.txt

wheel: venv
	$(PY) -m pip wheel --no-build-isolation --no-deps -w dist .

# Compile every .cu file for sm_80 and sm_90a without linking (works with a CPU-only torch).
cuda-check: venv
	bash tools/cuda_check.sh $(PY)

# Run the CUDA kernels' own source on the CPU (tools/cuda_emu) against the CPU ops: no GPU needed.
cuda-emu: build
	$(PY) -m pytest -q -ra -m cuda_emu tests

# The same with the fibers run in reverse and shuffled order between barriers (missing barriers),
# then under AddressSanitizer (out-of-bounds reads and writes). Slow; worth it before a GPU session.
cuda-emu-strict: build
	@for s in reverse shuffle; do echo "== schedule $$s"; PHASOR_CUDA_EMU_SCHEDULE=$$s $(PY) -m pytest -q -ra -m cuda_emu tests || exit 1; done
	@echo "== AddressSanitizer"
	PHASOR_CUDA_EMU_ASAN=1 ASAN_OPTIONS=detect_leaks=0 LD_PRELOAD="$$(gcc -print-file-name=libasan.so) $$(gcc -print-file-name=libstdc++.so)" \
	  $(PY) -m pytest -q -ra -m cuda_emu tests

# How the CUDA kernels touch memory (coalescing, bank conflicts per source line), from the emulator:
# bench/results/cuda_emu/profile/. `make cuda-profile PROFILE_ARGS="--systems gta"` for one system.
cuda-profile: build
	$(PY) tools/cuda_emu/access_profile.py $(PROFILE_ARGS)

# `make repro REPROS=wave-rnn` runs one; each job resumes from its checkpoints.
REPROS ?= rotating-features wave-rnn complex-rnn gta quantized-pde
repro: build
	@for r in $(REPROS); do $(PY) -m phasor repro $$r || exit 1; done

clean:
	rm -rf build dist $(VENV) python/phasor/_C*.so
