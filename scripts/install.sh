#!/usr/bin/env bash
# Install pssr into ./.venv (created if missing). `--test` also installs what the tests need.
# On Debian/Ubuntu as root it installs Debian's Fashion-MNIST package (real data, offline).
# torch is pinned by requirements/constraints.txt to the CPU build this environment provides;
# CUDA users: install the torch build you want first and drop the `-c` constraint.
set -euo pipefail
cd "$(dirname "$0")/.."
extra=""
[ "${1:-}" = "--test" ] && extra="[test]"

if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1 && [ ! -d /usr/share/datasets/fashion-mnist ]; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist) \
    || echo "install.sh: could not install dataset-fashion-mnist (Fashion-MNIST tests will be skipped)" >&2
fi

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -c requirements/constraints.txt "torch==2.13.0"
.venv/bin/python -m pip install -q -c requirements/constraints.txt -e ".${extra}"
# torchattacks (for the interoperability test) declares torchvision, which pulls a CUDA torch and does
# not import beside the pinned CPU build; torchattacks itself never imports it: install it alone
if [ -n "$extra" ]; then .venv/bin/python -m pip install -q --no-deps "torchattacks==3.5.1"; fi
echo "install.sh: pssr $(.venv/bin/python -c 'import pssr; print(pssr.__version__)') installed in .venv"
