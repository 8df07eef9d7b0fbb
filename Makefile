# make demo  - install what is missing, build, run the main job
# make test  - install what is missing, build, run the whole test suite
# make bench - CPU benchmarks, results in benchmarks/results/
PYTHON ?= python3
PIP := $(PYTHON) -m pip
export MAX_JOBS ?= 2

SOURCES := $(shell find csrc -type f) CMakeLists.txt pyproject.toml

.PHONY: demo test bench deps build clean

deps: .stamp-deps
.stamp-deps: requirements-dev.txt
	$(PIP) install -q -r requirements-dev.txt
	@touch $@

build: .stamp-build
.stamp-build: .stamp-deps $(SOURCES)
	CMAKE_BUILD_PARALLEL_LEVEL=$(MAX_JOBS) $(PIP) install -q --no-build-isolation --no-deps -e .
	@touch $@

test: build
	$(PYTHON) -m pytest -q tests

demo: build
	$(PYTHON) -m gemma4.demo

bench: build
	$(PYTHON) benchmarks/bench_ops_cpu.py
	$(PYTHON) benchmarks/bench_model_cpu.py

clean:
	rm -rf build .stamp-* python/gemma4/*.so
