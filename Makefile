# Fresh machine: `make demo` (install, prepare, run the main job) and `make test`.
PY := .venv/bin/python
PIP := .venv/bin/pip
export HF_HUB_OFFLINE := 1

.PHONY: install browser demo test bench clean

install: .venv/.installed

.venv/.installed: pyproject.toml
	python3 -m venv .venv
	# the CPU build of torch; with no local wheel, pip takes the registry's
	$(PIP) install -q "torch==2.13.0" || $(PIP) install -q torch
	$(PIP) install -q -e ".[test]"
	touch $@

# Debian's Chromium, for the test that opens a run's HTML report headless
browser:
	@command -v chromium >/dev/null 2>&1 || { S=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$S apt-get update -qq && $$S apt-get install -y -qq chromium >/dev/null; }

demo: install
	$(PY) jobs/prepare_demo.py --dir demo
	# certify thresholds: at most 1 point below full depth, with probability >= 0.9
	$(PY) jobs/calibrate.py --model demo/model --data demo/data/dev.parquet --label-column label \
		--max-accuracy-drop 0.01 --confidence 0.9 --max-rows 3000 --set max_length=64
	$(PY) jobs/tag_corpus.py --config conf/demo.yaml

test: install browser
	$(PY) -m pytest -q

# make bench MODEL=<dir from jobs/train_exits.py> (see BENCHMARKS.md for how the measured one was trained)
MODEL ?= models/sections
TEST_DATA := ../shared/data/debian_sections/test.parquet
bench: install
	$(PY) benchmarks/bench_tagging.py --model $(MODEL) --data $(TEST_DATA) --out benchmarks/results
	$(PY) benchmarks/bench_calibration.py --model $(MODEL) --data $(TEST_DATA) --out benchmarks/results

clean:
	rm -rf demo mlflow.db
