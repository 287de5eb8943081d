# gym-remote: `make demo` sets up and runs the demo, `make test` sets up and runs every check.
PYTHON ?= python3
VENV ?= .venv
# A second environment with the oldest supported simulator-side stack (Python 3.8 where the machine
# has it, gymnasium 0.29, numpy 1.x): the tests run real workers in it, as LIBERO installs do.
COMPAT_VENV ?= .venv-compat
COMPAT_PYTHON ?= $(firstword $(wildcard $(HOME)/.pyenv/versions/3.8*/bin/python3.8 /usr/bin/python3.8) $(PYTHON))
PIP_FLAGS ?= --quiet --disable-pip-version-check
# Simulator environments (LIBERO, robosuite) made by `gym-remote setup` for the tests.
SIM_HOME ?= .sim
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test lint bench bench-libero clean system-deps simulators

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install $(PIP_FLAGS) -e '.[dev]'
	touch $@

$(COMPAT_VENV)/.installed: pyproject.toml
	$(COMPAT_PYTHON) -m venv $(COMPAT_VENV)
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

# MuJoCo renders without a GPU through OSMesa.
system-deps:
	@dpkg -s libosmesa6 >/dev/null 2>&1 || ( $(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq libosmesa6 )

simulators: $(VENV)/.installed system-deps
	$(VENV)/bin/gym-remote setup libero --home $(SIM_HOME)
	$(VENV)/bin/gym-remote setup robosuite --home $(SIM_HOME)

test: $(VENV)/.installed $(COMPAT_VENV)/.installed simulators lint
	GYM_REMOTE_COMPAT_PYTHON=$(abspath $(COMPAT_VENV))/bin/python GYM_REMOTE_HOME=$(abspath $(SIM_HOME)) \
		$(VENV)/bin/python -m pytest -n 2

bench: $(VENV)/.installed
	$(VENV)/bin/python -m benchmarks.overhead

bench-libero: simulators
	GYM_REMOTE_HOME=$(abspath $(SIM_HOME)) $(VENV)/bin/python -m benchmarks.libero

clean:
	rm -rf $(VENV) $(COMPAT_VENV) $(SIM_HOME) .pytest_cache .ruff_cache .hypothesis
