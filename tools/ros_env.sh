#!/usr/bin/env bash
# Environment for rclpy (the ROS 2 PyPI wheels in .venv) and the generated specprune_ros messages (the
# colcon install tree that `make setup` builds in install/). One place for it: the Makefile, the tests
# and the docs all use this file.
#
#   source tools/ros_env.sh                 # bash: export into the current shell
#   tools/ros_env.sh CMD [ARGS...]          # run one command in that environment
#   tools/ros_env.sh --print                # show the variables it sets
#
# Sets PYTHONPATH (repository root first, so the sources win, then the install tree's site-packages
# for specprune_ros.msg), LD_LIBRARY_PATH (generated typesupport libraries, the wheels' libraries),
# AMENT_PREFIX_PATH / CMAKE_PREFIX_PATH, _ROS_WHEELS_BOOTSTRAP_COMPLETE=1 (the wheels then skip their
# re-exec of Python), RMW_IMPLEMENTATION, and keeps DDS traffic on this machine
# (ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST).
#
# ROS_DOMAIN_ID: kept when already set; otherwise, and always when SPECPRUNE_ROS_ISOLATE=1 (what
# `make test` sets), a domain in 1..101 derived from the process id, so test runs of several people on
# one machine do not see each other's topics. Children inherit it (SPECPRUNE_ROS_ISOLATE becomes "done").
#
# Inputs: VENV (default: <repo>/.venv).

_sp_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_sp_venv="${VENV:-$_sp_root/.venv}"
case "$_sp_venv" in /*) ;; *) _sp_venv="$_sp_root/$_sp_venv" ;; esac
_sp_install="$_sp_root/install/specprune_ros"

# prepend DIR to the colon-separated variable VAR unless it is already in it
_sp_prepend() {
  local var="$1" dir="$2" cur
  cur="${!var:-}"
  case ":$cur:" in
    *":$dir:"*) ;;
    *) export "$var=$dir${cur:+:$cur}" ;;
  esac
}

_sp_venv_sp=""
for _sp_d in "$_sp_venv"/lib/python3.*/site-packages; do
  [ -d "$_sp_d" ] && _sp_venv_sp="$_sp_d"
done
_sp_install_sp=""
for _sp_d in "$_sp_install"/lib/python3.*/site-packages; do
  [ -d "$_sp_d" ] && _sp_install_sp="$_sp_d"
done

# library search path: the generated libraries first, then the wheels' (what their bootstrap adds)
if [ -n "$_sp_venv_sp" ]; then
  for _sp_d in "$_sp_venv_sp"/ros_*.libs; do
    [ -d "$_sp_d" ] && _sp_prepend LD_LIBRARY_PATH "$_sp_d"
  done
fi
_sp_prepend LD_LIBRARY_PATH "$_sp_venv/lib"
_sp_prepend LD_LIBRARY_PATH "$_sp_install/lib"

# Python: the install tree after the repository root, so `import specprune_ros` loads the sources and
# the package path extension in specprune_ros/__init__.py finds the generated msg/ subpackage.
[ -n "$_sp_install_sp" ] && _sp_prepend PYTHONPATH "$_sp_install_sp"
_sp_prepend PYTHONPATH "$_sp_root"

_sp_prepend PATH "$_sp_venv/bin"
_sp_prepend AMENT_PREFIX_PATH "$_sp_venv"
_sp_prepend CMAKE_PREFIX_PATH "$_sp_venv"
if [ -d "$_sp_install" ]; then
  _sp_prepend AMENT_PREFIX_PATH "$_sp_install"
  _sp_prepend CMAKE_PREFIX_PATH "$_sp_install"
fi

export _ROS_WHEELS_BOOTSTRAP_COMPLETE=1
export RMW_IMPLEMENTATION="${RMW_IMPLEMENTATION:-rmw_fastrtps_cpp}"
if [ "${SPECPRUNE_ROS_ISOLATE:-0}" = "1" ]; then
  export ROS_DOMAIN_ID=$(( ${BASHPID:-$$} % 101 + 1 ))
  export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
  # processes started from here (nodes, nested tools/ros_env.sh) stay on this domain
  export SPECPRUNE_ROS_ISOLATE=done
else
  export ROS_DOMAIN_ID="${ROS_DOMAIN_ID:-$(( ${BASHPID:-$$} % 101 + 1 ))}"
  export ROS_AUTOMATIC_DISCOVERY_RANGE="${ROS_AUTOMATIC_DISCOVERY_RANGE:-LOCALHOST}"
fi
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"

if [ -z "$_sp_install_sp" ] || [ ! -d "$_sp_install_sp/specprune_ros/msg" ]; then
  echo "tools/ros_env.sh: warning: $_sp_install has no generated messages; run \`make setup\`" >&2
fi
unset _sp_d _sp_venv_sp _sp_install_sp _sp_root _sp_venv _sp_install
unset -f _sp_prepend

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  # executed, not sourced
  if [ "${1:-}" = "--print" ]; then
    for _sp_v in PYTHONPATH LD_LIBRARY_PATH AMENT_PREFIX_PATH CMAKE_PREFIX_PATH PATH \
        _ROS_WHEELS_BOOTSTRAP_COMPLETE RMW_IMPLEMENTATION ROS_DOMAIN_ID ROS_AUTOMATIC_DISCOVERY_RANGE \
        HF_HUB_OFFLINE; do
      echo "$_sp_v=${!_sp_v}"
    done
    exit 0
  fi
  if [ "$#" -eq 0 ] || [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then
    sed -n '2,20p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
    [ "$#" -eq 0 ] && exit 2
    exit 0
  fi
  exec "$@"
fi
