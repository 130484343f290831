"""Managing volumes with the thinpool client: resize, dm-thin messages passed through, name and
usage checks, and NBD over TCP."""
import json
import re
import socket

import pytest

from conftest import BLOCK, check_pattern, ours, program, qemu_io, qemu_io_failed, run, write_pattern

MIB = 1 << 20


def export_size(uri):
    return json.loads(run(program("nbdinfo"), "--json", uri).stdout)["exports"][0]["export-size"]


def test_resize(pool):
    uri = pool.create("vol", 4 * MIB)
    write_pattern(uri, 0x81, 3 * MIB, MIB)
    pool.cli("resize", "vol", "--size", "8M")
    assert pool.volumes()["vol"]["size"] == 8 * MIB
    assert export_size(uri) == 8 * MIB
    write_pattern(uri, 0x82, 7 * MIB, MIB)
    check_pattern(uri, 0x81, 3 * MIB, MIB)
    # Shrinking below mapped blocks would leave them out of reach: refused unless forced.
    r = pool.cli("resize", "vol", "--size", "6M", check=False)
    assert r.returncode == 1 and "--force" in r.stderr, r.stderr
    assert export_size(uri) == 8 * MIB
    pool.cli("resize", "vol", "--size", "6M", "--force")
    assert export_size(uri) == 6 * MIB
    r = qemu_io(uri, f"read {6 * MIB} 4096", check=False, read_only=True)
    assert qemu_io_failed(r), r.stdout
    pool.cli("resize", "vol", "--size", "8M")
    check_pattern(uri, 0x82, 7 * MIB, MIB)                   # still mapped, back in reach


def test_messages_pass_through(pool):
    pool.create("vol", MIB)
    out = pool.cli("message", "create_thin", "10").stdout
    assert "thin-10" in out, out
    out = pool.cli("message", "create_snap", "11", "10").stdout
    assert "thin-11" in out, out
    vols = pool.volumes()
    assert vols["thin-10"]["id"] == 10 and vols["thin-11"]["id"] == 11
    tid = pool.status()["pool"]["transaction_id"]
    pool.cli("message", "set_transaction_id", str(tid), str(tid + 100))
    assert pool.status()["pool"]["transaction_id"] == tid + 100
    pool.cli("message", "delete", "11")
    assert "thin-11" not in pool.volumes()
    for words, why in ((["create_thin", "10"], "exists"),                   # the device exists
                       (["set_transaction_id", "1", "2"], "transaction"),    # the old id is wrong
                       (["frobnicate"], "unsupported"),
                       (["delete", str(2**24)], "")):
        r = pool.cli("message", *words, check=False)
        assert r.returncode == 1 and r.stderr.startswith("thinpool: "), (words, r.stderr)
        assert why in r.stderr.lower(), (words, r.stderr)
    assert sorted(pool.volumes()) == ["thin-10", "vol"]


@pytest.mark.parametrize("args", [
    ["create", "-bad", "--size", "1M"],
    ["create", "a/b", "--size", "1M"],
    ["create", "x" * 65, "--size", "1M"],
    ["create", "vol2"],
    ["create", "vol2", "--size", "1000"],
    ["create", "vol2", "--size", "12Q"],
    ["snapshot", "vol"],
    ["frobnicate"],
    ["list", "extra"],
])
def test_usage_errors_exit_2(pool, args):
    pool.create("vol", MIB)
    r = pool.cli(*args, check=False)
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stdout == "" and r.stderr.startswith("thinpool: "), r.stderr
    assert list(pool.volumes()) == ["vol"]


def test_client_without_a_daemon(tmp_path):
    r = run(ours("thinpool"), "--dir", tmp_path / "nothing", "list", check=False)
    assert r.returncode == 1, r.stdout + r.stderr
    assert r.stderr.startswith("thinpool: ") and r.stderr.count("\n") == 1, r.stderr


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_nbd_over_tcp(pool_factory):
    port = free_port()
    pool = pool_factory("--nbd-tcp", f"127.0.0.1:{port}")
    pool.create("vol", 4 * MIB)
    uri = f"nbd://127.0.0.1:{port}/vol"
    write_pattern(uri, 0x91, 0, MIB)
    check_pattern(uri, 0x91, 0, MIB)
    check_pattern(pool.uri("vol"), 0x91, 0, MIB)             # the same volume on the Unix socket
    assert export_size(uri) == 4 * MIB
    assert re.search(rf"127\.0\.0\.1:{port}", pool.log_tail())
    write_pattern(uri, 0x92, MIB, BLOCK)
