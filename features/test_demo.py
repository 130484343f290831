"""The `thinpool demo` feature: a file-backed pool is created, continued, verified, and its metadata
is accepted by Debian's thin-provisioning-tools when they are installed."""
import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
THIN_CHECK = "/usr/sbin/thin_check"
THIN_DUMP = "/usr/sbin/thin_dump"
REQUIRE_REFERENCE = os.environ.get("THINPOOL_REQUIRE_REFERENCE") == "1"


@pytest.fixture(scope="module")
def thinpool():
    path = Path(os.environ.get("THINPOOL_BIN", ROOT / "build" / "release" / "thinpool")).resolve()
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.fail(f"thinpool binary not found at {path}: build it (cmake --preset release && "
                    f"cmake --build --preset release) or set THINPOOL_BIN")
    return path


def run(*args, cwd=None):
    return subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=300)


def reference_tool(path):
    if os.path.exists(path):
        return path
    if REQUIRE_REFERENCE:
        pytest.fail(f"{path} is missing (THINPOOL_REQUIRE_REFERENCE=1): install thin-provisioning-tools")
    pytest.skip(f"{path} not installed")


def summary(out):
    """Parses the pool summary the demo prints."""
    s = {}
    s["transaction_id"] = int(re.search(r"^\s*transaction id:\s+(\d+)$", out, re.M).group(1))
    s["time"] = int(re.search(r"^\s*time:\s+(\d+)$", out, re.M).group(1))
    m = re.search(r"^\s*data blocks:\s+(\d+) used / (\d+) total", out, re.M)
    s["data_used"], s["data_total"] = int(m.group(1)), int(m.group(2))
    m = re.search(r"^\s*metadata blocks:\s+(\d+) used / (\d+) total", out, re.M)
    s["metadata_used"], s["metadata_total"] = int(m.group(1)), int(m.group(2))
    s["devices"] = {
        int(d): {"mapped": int(n), "creation_time": int(c), "snapshotted_time": int(t), "highest": h}
        for d, n, c, t, h in re.findall(
            r"^\s*device (\d+): mapped_blocks=(\d+) creation_time=(\d+) snapshotted_time=(\d+) "
            r"highest_mapped=(\d+|none)$", out, re.M)
    }
    return s


def demo(thinpool, pool):
    r = run(thinpool, "demo", "--dir", pool)
    assert r.returncode == 0, f"demo failed ({r.returncode}):\n{r.stdout}\n{r.stderr}"
    assert re.search(r"^verified", r.stdout, re.M), r.stdout
    return summary(r.stdout)


def test_demo_twice(thinpool, tmp_path):
    pool = tmp_path / "pool"

    first = demo(thinpool, pool)
    assert (pool / "metadata").is_file()
    assert (pool / "data").is_file()
    assert first["transaction_id"] == 2       # origin written, then snapshot + writes
    assert first["time"] == 1                 # one snapshot
    assert first["data_total"] == 16384
    assert first["data_used"] == 1000 + 250 + 250
    assert 0 < first["metadata_used"] < first["metadata_total"]
    assert sorted(first["devices"]) == [0, 1]
    origin, snap = first["devices"][0], first["devices"][1]
    assert origin["mapped"] == 1250 and origin["highest"] == "1249"
    assert snap["mapped"] == 1000 and snap["highest"] == "999"
    assert snap["creation_time"] == 1

    second = demo(thinpool, pool)
    assert second["transaction_id"] == 3
    assert second["time"] == 2
    assert sorted(second["devices"]) == [0, 1, 2]
    assert second["devices"][1] == snap       # the first snapshot is untouched
    assert second["devices"][2]["mapped"] == 1250
    assert second["devices"][0]["mapped"] == 1500
    assert second["data_used"] == first["data_used"] + 500


def test_demo_metadata_passes_thin_check(thinpool, tmp_path):
    check = reference_tool(THIN_CHECK)
    pool = tmp_path / "pool"
    for _ in range(2):
        demo(thinpool, pool)
        r = run(check, pool / "metadata")
        assert r.returncode == 0, f"thin_check failed ({r.returncode}):\n{r.stdout}\n{r.stderr}"


def test_demo_metadata_dumps_with_thin_dump(thinpool, tmp_path):
    dump = reference_tool(THIN_DUMP)
    pool = tmp_path / "pool"
    s = demo(thinpool, pool)
    r = run(dump, pool / "metadata")
    assert r.returncode == 0, r.stderr
    m = re.search(r'<superblock [^>]*transaction="(\d+)"[^>]*data_block_size="(\d+)"[^>]*nr_data_blocks="(\d+)"',
                  r.stdout)
    assert m, r.stdout[:500]
    assert (int(m.group(1)), int(m.group(2)), int(m.group(3))) == (s["transaction_id"], 128, 16384)
    devices = {int(d): int(n) for d, n in re.findall(r'<device dev_id="(\d+)" mapped_blocks="(\d+)"', r.stdout)}
    assert devices == {d: v["mapped"] for d, v in s["devices"].items()}


def test_default_dir_is_pool_in_cwd(thinpool, tmp_path):
    r = run(thinpool, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "pool" / "metadata").is_file()
    assert "verified" in r.stdout


def test_help_and_version(thinpool):
    r = run(thinpool, "--help")
    assert r.returncode == 0
    assert "demo" in r.stdout and "--dir" in r.stdout
    assert "thinpool run" in r.stdout         # says the daemon is not there yet
    r = run(thinpool, "--version")
    assert r.returncode == 0
    assert re.fullmatch(r"thinpool \d+\.\d+\.\d+\n", r.stdout)


@pytest.mark.parametrize("args", [["frobnicate"], ["--no-such-option"], ["demo", "--no-such-option"]])
def test_usage_errors_exit_2(thinpool, tmp_path, args):
    r = run(thinpool, *args, cwd=tmp_path)
    assert r.returncode == 2
    assert r.stdout == ""
    assert r.stderr.startswith("thinpool: ")
    assert "Usage:" in r.stderr
    assert not (tmp_path / "pool").exists()
