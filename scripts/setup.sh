#!/usr/bin/env bash
# Installs the build dependencies (Debian 12), builds thinpool (release preset) and runs the pool
# daemon in the foreground on the embedded default: a file-backed pool in ./pool under the
# checkout (created on the first run), serving its volumes over NBD on pool/nbd.sock and taking
# commands on pool/control.sock. Ctrl-C stops it cleanly. Run as root or as a user with sudo; sudo
# is used for apt-get only, and only when not root. Safe to run again: the pool persists.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export DEBIAN_FRONTEND=noninteractive

PACKAGES=(build-essential cmake ninja-build libboost-program-options-dev libexpat1-dev libaio-dev
          libgtest-dev libgmock-dev libbenchmark-dev)

LOG="$(mktemp)"
trap 'rm -f "$LOG"' EXIT

# Runs a command with its output in $LOG; shows the output only if it fails.
quietly() {
    local what="$1"; shift
    echo "==> $what"
    if ! "$@" >"$LOG" 2>&1; then
        cat "$LOG" >&2
        echo "setup.sh: failed: $what" >&2
        exit 1
    fi
}

missing_packages() {
    local p
    for p in "$@"; do
        if [ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" != "install ok installed" ]; then
            echo "$p"
        fi
    done
}

install_packages() {
    local missing sudo=()
    mapfile -t missing < <(missing_packages "$@")
    if [ "${#missing[@]}" -eq 0 ]; then
        echo "==> packages already installed"
        return
    fi
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null || { echo "setup.sh: not root and sudo is not installed; run as root" >&2; exit 1; }
        sudo=(sudo env DEBIAN_FRONTEND=noninteractive)
    fi
    quietly "apt-get update" "${sudo[@]}" apt-get -q update
    quietly "apt-get install ${missing[*]}" "${sudo[@]}" apt-get -q install -y --no-install-recommends "${missing[@]}"
}

install_packages "${PACKAGES[@]}"
quietly "configure (cmake --preset release)" cmake --preset release
quietly "build (cmake --build --preset release)" cmake --build --preset release
echo "==> pool daemon: build/release/thinpool run --dir $ROOT/pool (Ctrl-C stops it)"
exec build/release/thinpool run --dir "$ROOT/pool"
