"""The metadata snapshot of a live pool: thin_dump -m and thin_delta -m read it while the daemon
runs, which is how an incremental backup finds the blocks that changed between two snapshots."""
import os
import re
import threading

import pytest

from conftest import (BLOCK, REQUIRE_REFERENCE, check_pattern, ours, program, python_nbd, qemu_io, run, sha256,
                      write_pattern)

MIB = 1 << 20
DEBIAN_DUMP = "/usr/sbin/thin_dump"
DEBIAN_DELTA = "/usr/sbin/thin_delta"


def debian(path):
    """Debian's tool, to compare with ours; None when not installed (a failure when
    THINPOOL_REQUIRE_REFERENCE=1)."""
    if os.path.exists(path):
        return path
    if REQUIRE_REFERENCE:
        pytest.fail(f"{path} is missing (THINPOOL_REQUIRE_REFERENCE=1): install thin-provisioning-tools")
    return None


def delta_ranges(xml):
    """thin_delta's compact output as {kind: [(begin, length)]}."""
    out = {}
    for kind, begin, length in re.findall(r'<(same|different|left_only|right_only) begin="(\d+)" length="(\d+)"/>',
                                          xml):
        out.setdefault(kind, []).append((int(begin), int(length)))
    return out


def blocks(ranges):
    return {b for begin, length in ranges for b in range(begin, begin + length)}


def dumped_devices(xml):
    return {int(d): int(n) for d, n in re.findall(r'<device dev_id="(\d+)" mapped_blocks="(\d+)"', xml)}


def test_incremental_backup(pool, tmp_path):
    nbd = python_nbd()
    size = 16 * MIB
    uri = pool.create("vol", size)
    write_pattern(uri, 0x10, 0, 4 * MIB)                    # blocks 0-63
    pool.cli("snapshot", "vol", "backup1")
    full = tmp_path / "full.img"
    run(program("nbdcopy"), pool.uri("backup1"), full)       # the full backup

    # Changes between the two backups: overwrites (whole and partial blocks), a new block, a discard.
    write_pattern(uri, 0x20, 3 * BLOCK, BLOCK)
    write_pattern(uri, 0x21, 10 * BLOCK + 4096, BLOCK)       # touches blocks 10 and 11
    write_pattern(uri, 0x22, 100 * BLOCK, 4096)
    qemu_io(uri, f"discard {40 * BLOCK} {2 * BLOCK}")
    pool.cli("snapshot", "vol", "backup2")
    ids = {name: v["id"] for name, v in pool.volumes().items()}

    pool.cli("message", "reserve_metadata_snap")
    held = pool.status()["pool"]["held_metadata_root"]
    assert isinstance(held, int) and held > 0
    meta = pool.dir / "metadata"

    # The live metadata itself is the daemon's: our tools refuse it; the snapshot is readable.
    r = run(ours("thin_dump"), meta, check=False)
    assert r.returncode != 0 and r.stderr.strip(), r.stdout[:300] + r.stderr
    dump = run(ours("thin_dump"), "-m", meta).stdout
    assert dumped_devices(dump) == {ids["vol"]: 63, ids["backup1"]: 64, ids["backup2"]: 63}  # 64 - 2 + 1
    if debian(DEBIAN_DUMP):
        assert run(DEBIAN_DUMP, "-m", meta).stdout == dump

    delta_args = ["-m", "--snap1", ids["backup1"], "--snap2", ids["backup2"], meta]
    delta = run(ours("thin_delta"), *delta_args).stdout
    if debian(DEBIAN_DELTA):
        assert run(DEBIAN_DELTA, *delta_args).stdout == delta
    d = delta_ranges(delta)
    assert blocks(d.get("different", [])) == {3, 10, 11}, delta
    assert blocks(d.get("right_only", [])) == {100}, delta
    assert blocks(d.get("left_only", [])) == {40, 41}, delta

    # Writes go on while the metadata snapshot is held; it does not move.
    write_pattern(uri, 0x30, 0, MIB)
    assert run(ours("thin_delta"), *delta_args).stdout == delta

    # Apply the increment to the full backup: it becomes the second backup.
    h = nbd.NBD()
    h.connect_uri(pool.uri("backup2"))
    try:
        with open(full, "r+b") as f:
            for b in sorted(blocks(d.get("different", []) + d.get("right_only", []) + d.get("left_only", []))):
                f.seek(b * BLOCK)
                f.write(h.pread(BLOCK, b * BLOCK))
    finally:
        h.shutdown()
    second = tmp_path / "second.img"
    run(program("nbdcopy"), pool.uri("backup2"), second)
    assert sha256(full) == sha256(second)

    pool.cli("message", "release_metadata_snap")
    assert pool.status()["pool"]["held_metadata_root"] is None
    r = run(ours("thin_dump"), "-m", meta, check=False)
    assert r.returncode != 0, "thin_dump -m found a metadata snapshot after the release"
    pool.cli("delete", "backup1")


def test_metadata_snapshot_held_during_writes(pool):
    """thin_dump -m gives the same answer again and again while clients write, snapshots come and
    go, and the pool commits; the snapshot survives a restart until it is released."""
    nbd = python_nbd()
    uri = pool.create("vol", 32 * MIB)
    write_pattern(uri, 0x40, 0, 2 * MIB)
    pool.cli("message", "reserve_metadata_snap")
    meta = pool.dir / "metadata"
    first = run(ours("thin_dump"), "-m", meta).stdout
    assert dumped_devices(first) == {0: 32}

    errors = []

    def writer():
        try:
            h = nbd.NBD()
            h.connect_uri(uri)
            for i in range(200):
                h.pwrite(bytes([i & 0xff]) * 4096, (i * 7 % 500) * BLOCK + 512)
                if i % 50 == 49:
                    h.flush()
            h.shutdown()
        except Exception as e:  # reported by the main thread
            errors.append(e)

    t = threading.Thread(target=writer)
    t.start()
    try:
        for i in range(5):
            assert run(ours("thin_dump"), "-m", meta).stdout == first
            pool.cli("snapshot", "vol", f"s{i}")
            if i % 2:
                pool.cli("delete", f"s{i - 1}")
    finally:
        t.join(timeout=120)
    assert not t.is_alive(), "the writer did not finish within 120 s"
    assert not errors, errors
    assert run(ours("thin_dump"), "-m", meta).stdout == first
    if debian(DEBIAN_DUMP):
        assert run(DEBIAN_DUMP, "-m", meta).stdout == first
    check_pattern(uri, 0x40, 0, 512)

    held = pool.status()["pool"]["held_metadata_root"]
    pool.stop()                                             # thin_check with the snapshot held
    pool.start()
    assert pool.status()["pool"]["held_metadata_root"] == held
    assert run(ours("thin_dump"), "-m", meta).stdout == first
    pool.cli("message", "release_metadata_snap")
    assert pool.status()["pool"]["held_metadata_root"] is None
