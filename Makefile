# Set-up is two commands: `make run` and `make test`. Both create .venv and
# install what they need into it; a second run only rebuilds what changed.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
CONFIG ?= config.toml
# The CPU build of torch, pinned: never let pip resolve another torch (a range
# that admits newer releases pulls a multi-GB CUDA build).
TORCH  := torch==2.13.0

PYX  := $(wildcard ext/*.pyx)
SO   := $(patsubst ext/%.pyx,router/%_c.stamp,$(PYX))
DEMO := model-store/fraud/1/model.pt

.PHONY: run test build demo lint bench bench-smoke clean

run: build demo
	$(PY) -m router serve --config $(CONFIG)

test: build
	$(PY) -m ruff check .
	$(PY) -m mypy
	$(PY) -m pytest
	# The pure-Python twins must pass the whole suite too (the daemons inherit the switch).
	ROUTER_NO_EXTENSIONS=1 $(PY) -m pytest -q

build: $(STAMP) $(SO)

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml setup.py | $(PY)
	$(PY) -m pip install -q --upgrade pip setuptools wheel Cython
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q --no-build-isolation -e '.[dev]'
	touch $@

router/%_c.stamp: ext/%.pyx $(STAMP)
	$(PY) setup.py -q build_ext --inplace
	touch $@

demo: build $(DEMO)

$(DEMO):
	$(PY) -m router demo-models --config $(CONFIG)

bench: build
	mkdir -p bench/out
	$(PY) -m pytest bench/test_micro.py bench/test_splitter.py --benchmark-only -q
	$(PY) -m bench.load --json bench/out/load.json
	$(PY) -m bench.shadow --json bench/out/shadow.json
	$(PY) -m bench.deploy --json bench/out/deploy.json
	$(PY) -m bench.idle --json bench/out/idle.json

# A few seconds of every scenario: every request must succeed and every result parse.
# No speed assertions (CI machines are noisy); the figures go to the log and the JSON.
bench-smoke: build
	mkdir -p bench/out
	$(PY) -m pytest bench/test_micro.py bench/test_splitter.py --benchmark-only -q --benchmark-min-rounds=3 --benchmark-max-time=0.05 \
		--benchmark-json=bench/out/micro.json
	$(PY) -m bench.load --quick --json bench/out/load-smoke.json
	$(PY) -m bench.shadow --quick --json bench/out/shadow-smoke.json
	$(PY) -m bench.deploy --quick --json bench/out/deploy-smoke.json

lint: build
	$(PY) -m ruff check .
	$(PY) -m mypy

clean:
	rm -rf build router/*.so router/*.stamp ext/*.c ext/*.html
