"""Snapshots through the daemon: a snapshot keeps the data of its moment while its origin moves on,
several are taken at one point in time, and deleting one frees what only it held."""
import pytest

from conftest import BLOCK, check_pattern, python_nbd, qemu_io, qemu_io_failed, write_pattern

MIB = 1 << 20


def test_snapshot_keeps_the_old_data(pool):
    uri = pool.create("vol", 16 * MIB)
    write_pattern(uri, 0xaa, 0, 2 * MIB)
    pool.cli("snapshot", "vol", "s1")
    s1 = pool.uri("s1")
    write_pattern(uri, 0xbb, 0, MIB)
    write_pattern(uri, 0xbc, 4 * MIB, BLOCK)                # new in the origin only
    check_pattern(s1, 0xaa, 0, 2 * MIB)
    check_pattern(s1, 0x00, 4 * MIB, BLOCK)
    check_pattern(uri, 0xbb, 0, MIB)
    check_pattern(uri, 0xaa, MIB, MIB)
    # A snapshot is a writable volume of its own; a partial write keeps the rest of its block.
    write_pattern(s1, 0xcc, MIB + 4096, 4096)
    check_pattern(s1, 0xaa, MIB, 4096)
    check_pattern(s1, 0xcc, MIB + 4096, 4096)
    check_pattern(s1, 0xaa, MIB + 8192, BLOCK - 8192)
    check_pattern(uri, 0xaa, MIB, MIB)

    vols = pool.status()["volumes"]
    s = {v["name"]: v for v in vols}
    assert s["s1"]["size"] == s["vol"]["size"] == 16 * MIB
    assert s["s1"]["id"] != s["vol"]["id"]
    assert s["s1"]["mapped_blocks"] == 2 * MIB // BLOCK
    # s1 holds alone the old first MiB and its rewritten block; vol its new first MiB, the block
    # at 4 MiB, and the block s1's write stopped sharing.
    assert s["s1"]["exclusive_blocks"] == MIB // BLOCK + 1
    assert s["vol"]["exclusive_blocks"] == MIB // BLOCK + 2

    used = pool.used_blocks()
    pool.cli("delete", "s1")
    assert "s1" not in pool.volumes()
    assert pool.used_blocks() == used - (MIB // BLOCK + 1)
    check_pattern(uri, 0xaa, MIB, MIB)                      # the shared blocks stay with the origin
    r = qemu_io(s1, "read 0 4096", check=False, read_only=True)
    assert qemu_io_failed(r), "a deleted snapshot is still served:\n" + r.stdout


def test_several_snapshots_at_one_point_in_time(pool):
    a, b = pool.create("a", 8 * MIB), pool.create("b", 4 * MIB)
    write_pattern(a, 0x1a, 0, MIB)
    write_pattern(b, 0x1b, 0, MIB)
    out = pool.cli("snapshot", "a", "sa", "b", "sb").stdout
    assert "sa" in out and "sb" in out, out
    write_pattern(a, 0x2a, 0, MIB)
    write_pattern(b, 0x2b, 0, MIB)
    check_pattern(pool.uri("sa"), 0x1a, 0, MIB)
    check_pattern(pool.uri("sb"), 0x1b, 0, MIB)
    check_pattern(a, 0x2a, 0, MIB)
    check_pattern(b, 0x2b, 0, MIB)
    vols = pool.volumes()
    assert vols["sa"]["size"] == 8 * MIB and vols["sb"]["size"] == 4 * MIB
    assert len({v["id"] for v in vols.values()}) == 4

    # All or nothing: one bad pair (an existing name) creates none of them.
    r = pool.cli("snapshot", "a", "sc", "b", "sa", check=False)
    assert r.returncode == 1, r.stdout + r.stderr
    assert r.stderr.startswith("thinpool: ") and "sa" in r.stderr, r.stderr
    assert sorted(pool.volumes()) == ["a", "b", "sa", "sb"]
    r = pool.cli("snapshot", "nosuch", "sd", check=False)
    assert r.returncode == 1 and "nosuch" in r.stderr, r.stderr
    assert sorted(pool.volumes()) == ["a", "b", "sa", "sb"]


def test_snapshot_of_a_snapshot(pool):
    uri = pool.create("vol", 4 * MIB)
    write_pattern(uri, 0x01, 0, 4 * MIB)
    pool.cli("snapshot", "vol", "s1")
    write_pattern(pool.uri("s1"), 0x02, 0, MIB)
    pool.cli("snapshot", "s1", "s2")
    write_pattern(pool.uri("s1"), 0x03, 0, MIB)
    check_pattern(pool.uri("s2"), 0x02, 0, MIB)
    check_pattern(pool.uri("s2"), 0x01, MIB, 3 * MIB)
    check_pattern(pool.uri("s1"), 0x03, 0, MIB)
    check_pattern(uri, 0x01, 0, 4 * MIB)


def test_snapshot_while_a_client_is_writing(pool):
    """A snapshot of an active volume is taken between writes: it holds everything the client
    finished before the snapshot command, and nothing the client wrote after it."""
    nbd = python_nbd()
    pool.create("vol", 8 * MIB)
    h = nbd.NBD()
    h.connect_uri(pool.uri("vol"))
    try:
        h.pwrite(b"\x41" * MIB, 0)
        h.flush()
        pool.cli("snapshot", "vol", "snap")
        h.pwrite(b"\x42" * MIB, 0)
        assert h.pread(MIB, 0) == b"\x42" * MIB
    finally:
        h.shutdown()
    check_pattern(pool.uri("snap"), 0x41, 0, MIB)


def test_delete_is_refused_while_connected(pool):
    nbd = python_nbd()
    pool.create("vol", 4 * MIB)
    h = nbd.NBD()
    h.connect_uri(pool.uri("vol"))
    try:
        assert pool.volume_status("vol")["connections"] == 1
        r = pool.cli("delete", "vol", check=False)
        assert r.returncode == 1, r.stdout + r.stderr
        assert "in use" in r.stderr, r.stderr
        h.pwrite(b"\x5c" * 4096, 0)                          # the connection still works
        assert h.pread(4096, 0) == b"\x5c" * 4096
    finally:
        h.shutdown()
    # The daemon notices the disconnection; then the delete goes through.
    pool.cli("delete", "vol")
    assert pool.volumes() == {}


@pytest.mark.parametrize("args, message", [
    (["create", "vol", "--size", "1M"], "exists"),
    (["delete", "nosuch"], "nosuch"),
    (["snapshot", "nosuch", "x"], "nosuch"),
    (["resize", "nosuch", "--size", "1M"], "nosuch"),
])
def test_bad_requests_fail_with_one_line(pool, args, message):
    pool.create("vol", MIB)
    r = pool.cli(*args, check=False)
    assert r.returncode == 1, r.stdout + r.stderr
    assert r.stdout == ""
    assert r.stderr.startswith("thinpool: ") and r.stderr.count("\n") == 1, r.stderr
    assert message in r.stderr, r.stderr
    assert list(pool.volumes()) == ["vol"]
