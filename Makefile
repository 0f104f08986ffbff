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

.PHONY: run test tools build ui demo lint bench bench-smoke fuzz clean

run: build demo
	$(PY) -m router serve --config $(CONFIG)

test: build tools
	$(PY) -m ruff check .
	$(PY) -m mypy
	$(PY) -m pytest
	# Again on the pure-Python twins (the daemons inherit the switch): the in-process layer, which also
	# holds each extension against its twin, and the daemon tests whose requests go through them.
	ROUTER_NO_EXTENSIONS=1 $(PY) -m pytest -q -m "not daemon or twins"

build: $(STAMP) $(SO) ui

# The web UI (ui/): npm ci from the lockfile, then esbuild bundles it into router/ui_dist/, which the daemon
# serves at /ui/ (Node.js is needed to build it, never to serve it). Rebuilt only when a source changed.
UI_DEPS  := ui/node_modules/.installed
UI_BUILT := router/ui_dist/.built
UI_SRC   := ui/build.mjs $(wildcard ui/src/*)

ui: $(UI_BUILT)

$(UI_DEPS): ui/package.json ui/package-lock.json
	@command -v npm >/dev/null 2>&1 || { echo "error: the web UI needs Node.js 20 and npm to build (apt-get install nodejs npm)"; exit 1; }
	cd ui && npm ci --no-audit --no-fund --loglevel=error
	touch $@

$(UI_BUILT): $(UI_DEPS) $(UI_SRC)
	cd ui && node build.mjs
	touch $@

# System tools the tests run: prometheus and promtool (tests/test_monitoring.py), from Debian's prometheus
# package, and Debian's chromium (tests/test_ui.py drives it with Playwright), installed only when missing.
# Where apt-get cannot install them the build goes on, and those tests fail saying what is missing.
tools:
	@command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1 || { command -v apt-get >/dev/null 2>&1 \
		&& (apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus) >/dev/null 2>&1; } \
		|| echo "warning: could not install prometheus (apt-get install prometheus): tests/test_monitoring.py will fail"
	@test -x /usr/bin/chromium || { command -v apt-get >/dev/null 2>&1 \
		&& (apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium) >/dev/null 2>&1; } \
		|| echo "warning: could not install chromium (apt-get install chromium): tests/test_ui.py will fail"

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
	$(PY) -m bench.chaos --json bench/out/chaos.json
	$(PY) -m bench.drift --json bench/out/drift.json
	$(PY) -m bench.predlog --json bench/out/predlog.json
	$(PY) -m bench.propagation --json bench/out/propagation.json

# A few seconds of every scenario: every request must succeed and every result parse.
# No speed assertions (CI machines are noisy); the figures go to the log and the JSON.
bench-smoke: build
	mkdir -p bench/out
	$(PY) -m pytest bench/test_micro.py bench/test_splitter.py --benchmark-only -q --benchmark-min-rounds=3 --benchmark-max-time=0.05 \
		--benchmark-json=bench/out/micro.json
	$(PY) -m bench.load --quick --json bench/out/load-smoke.json
	$(PY) -m bench.shadow --quick --json bench/out/shadow-smoke.json
	$(PY) -m bench.deploy --quick --json bench/out/deploy-smoke.json
	$(PY) -m bench.chaos --quick --json bench/out/chaos-smoke.json
	$(PY) -m bench.drift --quick --json bench/out/drift-smoke.json
	$(PY) -m bench.predlog --quick --json bench/out/predlog-smoke.json
	$(PY) -m bench.propagation --quick --json bench/out/propagation-smoke.json

# Coverage-guided fuzzing (tests/fuzz/): each target runs FUZZ_SECONDS under atheris, from its corpus
# in tests/fuzz/corpus/<target>/; then libFuzzer's -merge=1 adds to that corpus only the inputs that reach
# code it did not, so it grows by a few files per new branch. Review and commit the new files (the
# tests replay every one). Scratch inputs and crash files stay in build/fuzz/; a crash stops the run,
# and `$(PY) -m tests.fuzz <target> build/fuzz/<target>-crash-...` replays it. tests/test_fuzz.py
# runs each target for 3 s.
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?= frames envelope http_head oip_json oip_binary config_toml config_struct

fuzz: build
	set -e; for t in $(FUZZ_TARGETS); do \
		mkdir -p build/fuzz/$$t; \
		$(PY) -m tests.fuzz $$t build/fuzz/$$t tests/fuzz/corpus/$$t -max_total_time=$(FUZZ_SECONDS) \
			-timeout=10 -artifact_prefix=build/fuzz/$$t-; \
		$(PY) -m tests.fuzz $$t -merge=1 tests/fuzz/corpus/$$t build/fuzz/$$t -artifact_prefix=build/fuzz/$$t-; \
	done

lint: build
	$(PY) -m ruff check .
	$(PY) -m mypy

clean:
	rm -rf build router/*.so router/*.stamp ext/*.c ext/*.html router/ui_dist $(UI_DEPS)
