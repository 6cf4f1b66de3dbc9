#!/usr/bin/env bash
# Installs every Debian 12 package procpool's build, tests, benchmarks and demo need.
# Idempotent: packages already present are skipped quickly. Needs root (or sudo).
set -euo pipefail

packages=(
  build-essential cmake ninja-build g++ clang libclang-rt-14-dev pkg-config git
  libgtest-dev libgmock-dev libbenchmark-dev
  libcereal-dev libcli11-dev libvips-dev
  libtbb-dev libboost-dev libomp-dev
  libopenmpi-dev openmpi-bin python3-mpi4py
  nlohmann-json3-dev librsvg2-bin
  python3 python3-joblib python3-pebble python3-numpy
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
echo "procpool: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
