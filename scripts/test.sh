#!/usr/bin/env bash
# Installs the build and test dependencies (Debian 12, including Debian's thin-provisioning-tools
# as the reference), builds the release preset, runs the unit tests (ctest) and the feature tests
# (pytest in features/: the daemon driven by real NBD clients), then builds the tools, the damage
# corpus test, the pool runtime's concurrency/crash/scenario suites and the NBD server's and the
# daemon's tests with the asan preset (clang 16) and runs them under ASan+UBSan, and last runs every
# libFuzzer target of tests/fuzz for a bounded time (THINPOOL_FUZZ_TIME seconds each, 20 by default)
# from the same build, starting from its seed corpus.
# Prints "N passed, N failed" last; exits non-zero on any failure.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export DEBIAN_FRONTEND=noninteractive
# Compatibility tests against the Debian tools, and the tests that drive the daemon with real NBD
# clients, fail instead of skipping when the tools or clients are missing.
export THINPOOL_REQUIRE_REFERENCE=1
export THINPOOL_REQUIRE_CLIENTS=1

PACKAGES=(build-essential cmake ninja-build libboost-program-options-dev libexpat1-dev libaio-dev
          libgtest-dev libgmock-dev libbenchmark-dev thin-provisioning-tools python3-pytest
          qemu-utils libnbd-bin python3-libnbd nbdkit fuse3 fio e2fsprogs clang-16 libclang-rt-16-dev)

LOG="$(mktemp)"
CTEST_LOG="$(mktemp)"
PYTEST_LOG="$(mktemp)"
CORPUS_LOG="$(mktemp)"
trap 'rm -f "$LOG" "$CTEST_LOG" "$PYTEST_LOG" "$CORPUS_LOG"' EXIT

quietly() {
    local what="$1"; shift
    echo "==> $what"
    if ! "$@" >"$LOG" 2>&1; then
        cat "$LOG" >&2
        echo "test.sh: failed: $what" >&2
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
        command -v sudo >/dev/null || { echo "test.sh: not root and sudo is not installed; run as root" >&2; exit 1; }
        sudo=(sudo env DEBIAN_FRONTEND=noninteractive)
    fi
    quietly "apt-get update" "${sudo[@]}" apt-get -q update
    quietly "apt-get install ${missing[*]}" "${sudo[@]}" apt-get -q install -y --no-install-recommends "${missing[@]}"
}

install_packages "${PACKAGES[@]}"
quietly "configure (cmake --preset release)" cmake --preset release
quietly "build (cmake --build --preset release)" cmake --build --preset release

passed=0
failed=0
skipped=0
status=0

# ---- unit tests ----
echo "==> unit tests (ctest --preset release)"
set +e
ctest --preset release >"$CTEST_LOG" 2>&1
ctest_rc=$?
set -e
# Show failures in full, otherwise only the summary.
if [ "$ctest_rc" -ne 0 ]; then
    cat "$CTEST_LOG"
    status=1
else
    grep -E 'tests passed|No tests were found' "$CTEST_LOG" || true
fi
# "95% tests passed, 2 tests failed out of 40"
summary="$(grep -E '[0-9]+% tests passed, [0-9]+ tests? failed out of [0-9]+' "$CTEST_LOG" | tail -n 1 || true)"
if [ -n "$summary" ]; then
    total="$(sed -E 's/.* out of ([0-9]+).*/\1/' <<<"$summary")"
    nfail="$(sed -E 's/.*tests passed, ([0-9]+) tests? failed.*/\1/' <<<"$summary")"
    # ctest counts skipped tests as passed; they are listed under "did not run" as "(Skipped)".
    nskip="$(grep -cE '^[[:space:]]+[0-9]+ - .*\(Skipped\)$' "$CTEST_LOG" || true)"
    passed=$((passed + total - nfail - nskip))
    failed=$((failed + nfail))
    skipped=$((skipped + nskip))
elif [ "$ctest_rc" -ne 0 ]; then
    failed=$((failed + 1))   # ctest itself failed before running tests
fi

# ---- feature tests ----
if compgen -G "features/test_*.py" >/dev/null; then
    # Debian's python, where python3-pytest and python3-libnbd went (the python3 first on PATH
    # may be another installation, pyenv or a venv, without them).
    PYTHON=/usr/bin/python3
    echo "==> feature tests ($PYTHON -m pytest -q features)"
    set +e
    "$PYTHON" -m pytest -q -p no:cacheprovider features 2>&1 | tee "$PYTEST_LOG"
    pytest_rc=${PIPESTATUS[0]}
    set -e
    [ "$pytest_rc" -eq 0 ] || status=1
    # Last line, e.g. "3 passed, 1 failed, 1 skipped in 0.42s"
    last="$(tail -n 1 "$PYTEST_LOG")"
    p="$(grep -oE '[0-9]+ passed' <<<"$last" | grep -oE '[0-9]+' || true)"
    f="$(grep -oE '[0-9]+ failed' <<<"$last" | grep -oE '[0-9]+' || true)"
    e="$(grep -oE '[0-9]+ errors?' <<<"$last" | grep -oE '[0-9]+' || true)"
    k="$(grep -oE '[0-9]+ skipped' <<<"$last" | grep -oE '[0-9]+' || true)"
    passed=$((passed + ${p:-0}))
    skipped=$((skipped + ${k:-0}))
    failed=$((failed + ${f:-0} + ${e:-0}))
    if [ "$pytest_rc" -ne 0 ] && [ -z "$p$f$e" ]; then
        failed=$((failed + 1))   # pytest failed without running tests (collection or usage error)
    fi
fi

# ---- under AddressSanitizer + UndefinedBehaviorSanitizer: the damage corpus, the pool runtime, ----
# ---- the NBD server, the daemon, leaf sharing ----
# The corpus test (tests/tools/damage_corpus_test.cc) also ran above in release; here it runs from
# build/asan, so every tool it starts over every damaged image runs under ASan+UBSan (a sanitizer
# report, a crash or a hang fails a test). The pool runtime's concurrency, crash and scenario suites
# run there too, and so do the NBD server's protocol tests (hostile clients included) and the
# daemon's (its CLI test starts the asan build of thinpool), and the b-tree builder's leaf sharing
# (nodes built in memory, copied between neighbours). Test targets depend on every tool, so
# building them builds just what they need.
ASAN_TESTS=(tools_damage_corpus_test persistent_data_btree_leaf_sharing_test thin_pool_concurrency_test thin_pool_crash_test thin_pool_scenarios_test
            thin_nbd_handshake_test thin_nbd_transmission_test thin_nbd_server_test thin_daemon_daemon_test
            thin_daemon_cli_test)
quietly "configure (cmake --preset asan)" cmake --preset asan
FUZZ_TARGETS=()
for f in tests/fuzz/*_fuzz.cc; do FUZZ_TARGETS+=("$(basename "$f" .cc)"); done
quietly "build the tools, ${ASAN_TESTS[*]} and ${FUZZ_TARGETS[*]} (cmake --build --preset asan)" \
    cmake --build --preset asan --target "${ASAN_TESTS[@]}" "${FUZZ_TARGETS[@]}"
# Symbolized sanitizer reports (scripts/fuzz explains why the path is given).
command -v llvm-symbolizer >/dev/null && export ASAN_SYMBOLIZER_PATH=${ASAN_SYMBOLIZER_PATH:-$(readlink -f "$(command -v llvm-symbolizer)")}
for t in "${ASAN_TESTS[@]}"; do
    echo "==> $t under ASan+UBSan (build/asan/$t)"
    set +e
    ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1}" \
    UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1}" \
        "build/asan/$t" --gtest_brief=1 >"$CORPUS_LOG" 2>&1
    rc=$?
    set -e
    # "[  PASSED  ] 40 tests.", "[  FAILED  ] 2 tests, listed below:", "[  SKIPPED ] 1 test, listed below:"
    t_passed="$(grep -oE '^\[  PASSED  \] [0-9]+ tests?' "$CORPUS_LOG" | grep -oE '[0-9]+' | tail -n 1 || true)"
    t_failed="$(grep -oE '^\[  FAILED  \] [0-9]+ tests?, listed below' "$CORPUS_LOG" | grep -oE '[0-9]+' | tail -n 1 || true)"
    t_skipped="$(grep -oE '^\[  SKIPPED \] [0-9]+ tests?, listed below' "$CORPUS_LOG" | grep -oE '[0-9]+' | tail -n 1 || true)"
    passed=$((passed + ${t_passed:-0}))
    failed=$((failed + ${t_failed:-0}))
    skipped=$((skipped + ${t_skipped:-0}))
    if [ "$rc" -ne 0 ]; then
        cat "$CORPUS_LOG"
        status=1
        # Died before gtest's summary, or failed after it (a sanitizer report from the test itself).
        [ -n "${t_failed:-}" ] || failed=$((failed + 1))
    else
        echo "${t_passed:-0} tests passed under ASan+UBSan"
    fi
done

# ---- libFuzzer targets (ASan+UBSan, build/asan): each one counts as a test ----
FUZZ_TIME="${THINPOOL_FUZZ_TIME:-20}"
echo "==> fuzz targets, ${FUZZ_TIME} s each (scripts/fuzz --time $FUZZ_TIME --no-build)"
set +e
bash scripts/fuzz --time "$FUZZ_TIME" --no-build >"$CORPUS_LOG" 2>&1
fuzz_rc=$?
set -e
cat "$CORPUS_LOG"
# one line per target: "<target>  executions N  corpus N  crashes N  ok|CRASH (see log)"
f_ok="$(grep -cE '_fuzz +executions .* ok$' "$CORPUS_LOG" || true)"
f_bad="$(grep -cE '_fuzz +executions .* CRASH' "$CORPUS_LOG" || true)"
passed=$((passed + f_ok))
failed=$((failed + f_bad))
if [ "$fuzz_rc" -ne 0 ]; then
    status=1
    [ "$f_bad" -gt 0 ] || failed=$((failed + 1))   # the script failed before running the targets
elif [ "$f_ok" -ne "${#FUZZ_TARGETS[@]}" ]; then
    echo "test.sh: scripts/fuzz reported $f_ok of ${#FUZZ_TARGETS[@]} targets" >&2
    status=1; failed=$((failed + 1))
fi

[ "$skipped" -eq 0 ] || echo "($skipped skipped)"
echo "$passed passed, $failed failed"
exit "$status"
