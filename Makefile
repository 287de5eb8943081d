# gym-remote: `make demo` sets up and runs the demo, `make test` sets up and runs every check.
PYTHON ?= python3
VENV ?= .venv
# A second environment with the oldest supported simulator-side stack (gymnasium 0.29, numpy 1.x):
# the tests run real workers in it, the way LIBERO installs run them.
COMPAT_VENV ?= .venv-compat
PIP_FLAGS ?= --quiet --disable-pip-version-check

.PHONY: demo test lint bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install $(PIP_FLAGS) -e '.[dev]'
	touch $@

$(COMPAT_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(COMPAT_VENV)
	$(COMPAT_VENV)/bin/pip install $(PIP_FLAGS) 'gymnasium==0.29.1' 'numpy<2' -e .
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/python examples/demo.py

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	# Code that runs inside simulator interpreters keeps to Python 3.8.
	$(VENV)/bin/vermin --target=3.8- --no-tips --violations --eval-annotations \
		gym_remote/__init__.py gym_remote/errors.py gym_remote/protocol.py gym_remote/spaces.py \
		gym_remote/worker.py gym_remote/registration.py gym_remote/testing.py gym_remote/envs/*.py

test: $(VENV)/.installed $(COMPAT_VENV)/.installed lint
	GYM_REMOTE_COMPAT_PYTHON=$(abspath $(COMPAT_VENV))/bin/python \
		$(VENV)/bin/python -m pytest -n 2

bench: $(VENV)/.installed
	$(VENV)/bin/python -m benchmarks.overhead

clean:
	rm -rf $(VENV) $(COMPAT_VENV) .pytest_cache .ruff_cache .hypothesis
