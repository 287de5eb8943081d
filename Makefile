# gym-remote: `make demo` sets up and runs the demo, `make test` sets up and runs every check.
PYTHON ?= python3
VENV ?= .venv
# A second environment with the oldest supported simulator-side stack (Python 3.8 where the machine
# has it, gymnasium 0.29, numpy 1.x): the tests run real workers in it, as LIBERO installs do.
COMPAT_VENV ?= .venv-compat
COMPAT_PYTHON ?= $(firstword $(wildcard $(HOME)/.pyenv/versions/3.8*/bin/python3.8 /usr/bin/python3.8) $(PYTHON))
PIP_FLAGS ?= --quiet --disable-pip-version-check
# LeRobot 0.6 (Python >= 3.12) with the plugin in integrations/lerobot, for its integration test;
# Stable-Baselines3 shares its torch, for the SB3 script test.
LEROBOT_VENV ?= .venv-lerobot
LEROBOT_PYTHON ?= $(firstword $(wildcard $(HOME)/.pyenv/versions/3.12*/bin/python3.12 /usr/bin/python3.12))
# Simulator environments (LIBERO, robosuite) made by `gym-remote setup` for the tests.
SIM_HOME ?= .sim
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test test-lerobot lint bench bench-libero clean system-deps simulators

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install $(PIP_FLAGS) -e '.[dev]'
	# openpi's own client, for its wire codec in the tests; it pins numpy<2, which its codec does not need.
	$(VENV)/bin/pip install $(PIP_FLAGS) --no-deps 'openpi-client==0.1.2'
	touch $@

$(COMPAT_VENV)/.installed: pyproject.toml
	$(COMPAT_PYTHON) -m venv $(COMPAT_VENV)
	$(COMPAT_VENV)/bin/pip install $(PIP_FLAGS) 'gymnasium==0.29.1' 'numpy<2' -e .
	touch $@

$(LEROBOT_VENV)/.installed: pyproject.toml integrations/lerobot/pyproject.toml
	$(LEROBOT_PYTHON) -m venv $(LEROBOT_VENV)
	$(LEROBOT_VENV)/bin/pip install $(PIP_FLAGS) 'lerobot[dataset,evaluation]==0.6.1' \
		'stable-baselines3==2.9.2' pytest pytest-timeout psutil -e . -e integrations/lerobot
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/python examples/demo.py

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	# The package's annotations (it ships py.typed) are checked too.
	$(VENV)/bin/mypy
	# Code that runs inside simulator interpreters keeps to Python 3.8.
	$(VENV)/bin/vermin --target=3.8- --no-tips --violations --eval-annotations \
		gym_remote/__init__.py gym_remote/errors.py gym_remote/error_envelope.py gym_remote/protocol.py gym_remote/spaces.py gym_remote/space_walk.py \
		gym_remote/worker.py gym_remote/sharedmem.py \
		gym_remote/step/__init__.py gym_remote/step/layout.py gym_remote/step/frames.py gym_remote/step/responder.py gym_remote/step/batch_writer.py gym_remote/peers.py gym_remote/registration.py gym_remote/testing.py gym_remote/envs/*.py

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
	$(MAKE) test-lerobot

# The LeRobot plugin against the real lerobot-eval, where the machine has Python 3.12.
test-lerobot: simulators
ifeq ($(LEROBOT_PYTHON),)
	@echo "test-lerobot: skipped, no Python 3.12 here (set LEROBOT_PYTHON=/path/to/python3.12)"
else
	$(MAKE) $(LEROBOT_VENV)/.installed
	GYM_REMOTE_HOME=$(abspath $(SIM_HOME)) $(LEROBOT_VENV)/bin/python -m pytest \
		tests/test_lerobot_plugin.py tests/test_sb3_shaped.py tests/test_lerobot_dataset.py
endif

bench: $(VENV)/.installed
	$(VENV)/bin/python -m benchmarks.overhead
	GYM_REMOTE_HOME=$(abspath $(SIM_HOME)) $(VENV)/bin/python -m benchmarks.vector
	$(VENV)/bin/python -m benchmarks.eval
	GYM_REMOTE_HOME=$(abspath $(SIM_HOME)) $(VENV)/bin/python -m benchmarks.recording
	$(VENV)/bin/python -m benchmarks.scale

bench-libero: simulators
	GYM_REMOTE_HOME=$(abspath $(SIM_HOME)) $(VENV)/bin/python -m benchmarks.libero

clean:
	rm -rf $(VENV) $(COMPAT_VENV) $(LEROBOT_VENV) $(SIM_HOME) .pytest_cache .ruff_cache .hypothesis
