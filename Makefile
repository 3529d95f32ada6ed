# Two commands for a new user:  make demo  (the web demo on the shipped model; prints its URL)
#                               make test  (the whole test suite)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The PyTorch build to install; the machines this project is built on serve these releases locally.
TORCH ?= torch==2.14.1 torchvision==0.29.1
CAPTION_DATA ?= ../shared/data
DEMO_ARGS ?=
# apt-get as root, else through sudo
APT := $(if $(filter 0,$(shell id -u)),,sudo) env DEBIAN_FRONTEND=noninteractive apt-get

.PHONY: install demo test test-fast lint java chromium prepare-flickr8k train-default train-flickr8k-lite2 train-lite0 train-scst clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

# The COCO metrics need Java (PTB tokenizer, METEOR); install a headless JRE where it is missing.
java:
	@command -v java >/dev/null 2>&1 || { \
	  echo "Java not found: installing default-jre-headless"; \
	  $(APT) update -qq && $(APT) install -y -qq default-jre-headless; }

# The browser tests use Debian's chromium (playwright drives it; it downloads no browser). Where it cannot
# be installed the browser tests skip and say why, so this target warns instead of failing.
chromium:
	@test -x /usr/bin/chromium || { \
	  echo "chromium not found: installing Debian's chromium for the browser tests"; \
	  { $(APT) update -qq && $(APT) install -y -qq chromium; } \
	  || echo "warning: could not install chromium; the browser tests will be skipped"; }

demo: install
	CAPTION_DATA=$(CAPTION_DATA) $(BIN)/python demo/app.py $(DEMO_ARGS)

test: install java chromium
	CAPTION_DATA=$(CAPTION_DATA) $(BIN)/python -m pytest -q
	$(BIN)/ruff check caption scripts demo tests

# The fast subset for contributors (README, "Tests"): everything but the tests marked slow, which train
# models, start Ray or demo servers, or caption the golden photos with every shipped model.
test-fast: install java
	CAPTION_DATA=$(CAPTION_DATA) $(BIN)/python -m pytest -q -m "not slow"

lint: install
	$(BIN)/ruff check caption scripts demo tests

prepare-flickr8k: install
	$(BIN)/caption prepare flickr8k $(CAPTION_DATA)/flickr8k --out data/flickr8k

# `$(call resume,RUN)` adds --resume when RUN already holds a checkpoint, so every stage of a training target
# continues where a stop left it (a finished stage just reloads and moves on). It expands inside the shell,
# when the stage starts, because make expands a whole recipe before running its first line.
resume = $$(test -f $(1)/latest.json && echo --resume)

# Reproduces models/everyday-lite2, the default (about 1 h on 2 CPU cores; times in its model card):
# cross-entropy training on frozen EfficientNet-Lite2 features of Flickr8k and 2,197 COCO photos mixed, export.
train-default: prepare-flickr8k
	$(BIN)/caption train --config configs/everyday_lite2.yaml $(call resume,runs/everyday_lite2)
	$(BIN)/caption export runs/everyday_lite2 models/everyday-lite2 --fp16 --beam-size 3 --length-penalty 0.75 --force

# Reproduces models/flickr8k-lite2, trained on Flickr8k alone (the default before COCO photos came; about
# 1 h 45 min): cross-entropy on frozen EfficientNet-Lite2 features, self-critical training, export.
train-flickr8k-lite2: prepare-flickr8k
	$(BIN)/caption train --config configs/flickr8k_lite2.yaml $(call resume,runs/flickr8k_lite2)
	$(BIN)/caption train --config configs/flickr8k_lite2_scst.yaml $(call resume,runs/flickr8k_lite2_scst)
	$(BIN)/caption export runs/flickr8k_lite2_scst models/flickr8k-lite2 --fp16 --beam-size 3 --length-penalty 1.0 --force

# Reproduces models/flickr8k-lite0, the fast alternative (about 1 h 45 min on 2 CPU cores: 15 epochs of ~7 min).
train-lite0: prepare-flickr8k
	$(BIN)/caption train --config configs/flickr8k_lite0.yaml $(call resume,runs/flickr8k_lite0)
	$(BIN)/caption export runs/flickr8k_lite0 models/flickr8k-lite0 --fp16 --beam-size 3 --length-penalty 0.75 --force

# Self-critical training of the Lite0 cross-entropy model (configs/flickr8k_lite0_scst.yaml).
train-scst: prepare-flickr8k
	$(BIN)/caption train --config configs/flickr8k_lite0_scst.yaml $(call resume,runs/flickr8k_lite0_scst)

clean:
	rm -rf $(VENV) cache runs data .pytest_cache
