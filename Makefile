# Fresh machine: `make demo` (install, prepare, run the main job) and `make test`.
PY := .venv/bin/python
PIP := .venv/bin/pip
export HF_HUB_OFFLINE := 1

.PHONY: install demo test bench clean

install: .venv/.installed

.venv/.installed: pyproject.toml
	python3 -m venv .venv
	# the CPU build of torch; with no local wheel, pip takes the registry's
	$(PIP) install -q "torch==2.13.0" || $(PIP) install -q torch
	$(PIP) install -q -e ".[test]"
	touch $@

demo: install
	$(PY) jobs/prepare_demo.py --dir demo
	$(PY) jobs/tag_corpus.py --config conf/demo.yaml

test: install
	$(PY) -m pytest -q

bench: install
	$(PY) benchmarks/bench_tagging.py --out benchmarks/results

clean:
	rm -rf demo mlflow.db
