"""Discards (NBD trim) give whole blocks back to the pool; write-zeroes makes ranges read as zeros."""
import json

from conftest import (BLOCK, check_pattern, holes, nbd_map, pattern, program, python_nbd, qemu_io, run, write_file,
                      write_pattern)

MIB = 1 << 20


def test_discard_releases_blocks(pool):
    nbd = python_nbd()
    uri = pool.create("vol", 16 * MIB)
    write_pattern(uri, 0xd1, 0, 4 * MIB)
    assert pool.used_blocks() == 64
    qemu_io(uri, f"discard 0 {2 * MIB}")
    assert pool.used_blocks() == 32
    assert pool.volume_status("vol")["mapped_blocks"] == 32
    check_pattern(uri, 0x00, 0, 2 * MIB)
    check_pattern(uri, 0xd1, 2 * MIB, 2 * MIB)

    h = nbd.NBD()
    h.connect_uri(uri)
    try:
        h.trim(MIB, 3 * MIB)
        h.trim(BLOCK, 2 * MIB + BLOCK, nbd.CMD_FLAG_FUA)
        # Part of a block: nothing can be given back.
        h.trim(4096, 2 * MIB + 8192)
    finally:
        h.shutdown()
    assert pool.used_blocks() == 32 - 16 - 1
    assert holes(uri) == [(0, 2 * MIB), (2 * MIB + BLOCK, BLOCK), (3 * MIB, 13 * MIB)]
    check_pattern(uri, 0xd1, 2 * MIB, 8192)
    check_pattern(uri, 0xd1, 2 * MIB + 2 * BLOCK, MIB - 2 * BLOCK)


def test_discard_of_a_shared_block_keeps_it_for_the_snapshot(pool):
    uri = pool.create("vol", 4 * MIB)
    write_pattern(uri, 0xd2, 0, MIB)
    pool.cli("snapshot", "vol", "snap")
    used = pool.used_blocks()
    qemu_io(uri, f"discard 0 {MIB}")
    assert pool.used_blocks() == used
    check_pattern(pool.uri("snap"), 0xd2, 0, MIB)
    check_pattern(uri, 0x00, 0, MIB)
    assert pool.volume_status("vol")["mapped_blocks"] == 0
    # Now the snapshot is the last holder: its discard frees the blocks.
    qemu_io(pool.uri("snap"), f"discard 0 {MIB}")
    assert pool.used_blocks() == used - MIB // BLOCK


def test_ignore_discard_hides_trim(pool_factory):
    pool = pool_factory("--feature", "ignore_discard")
    uri = pool.create("vol", 4 * MIB)
    info = json.loads(run(program("nbdinfo"), "--json", uri).stdout)["exports"][0]
    assert info["can_trim"] is False
    assert pool.status()["pool"]["discard"] == "ignore_discard"


def test_write_zeroes_reads_zeros(pool):
    uri = pool.create("vol", 8 * MIB)
    write_pattern(uri, 0xee, 0, 4 * MIB)
    qemu_io(uri,
            f"write -z 0 {MIB}",                     # NBD_CMD_FLAG_NO_HOLE
            f"write -z -u {MIB} {MIB}",              # may punch a hole
            f"write -z {2 * MIB + 512} 4096")        # inside a block
    check_pattern(uri, 0x00, 0, 2 * MIB)
    check_pattern(uri, 0xee, 2 * MIB, 512)
    check_pattern(uri, 0x00, 2 * MIB + 512, 4096)
    check_pattern(uri, 0xee, 2 * MIB + 4608, 2 * MIB - 4608)
    # NO_HOLE zeroes stay allocated.
    data = [(o, n) for o, n, t, _ in nbd_map(uri) if not t & 1]
    assert data and data[0][0] == 0 and data[0][1] >= MIB, data

    nbd = python_nbd()
    h = nbd.NBD()
    h.connect_uri(uri)
    try:
        h.zero(2 * MIB, 4 * MIB, nbd.CMD_FLAG_FUA)
        assert h.pread(2 * MIB, 4 * MIB) == bytes(2 * MIB)
    finally:
        h.shutdown()


def test_write_zeroes_does_not_provision(pool, tmp_path):
    """Zeroing what already reads as zeros, when the client allows holes (no NBD_CMD_FLAG_NO_HOLE),
    must not take data blocks: nbdcopy and qemu-img convert zero every hole of a sparse image that
    way, which would fill a thin volume. (With NO_HOLE the client asks for allocated zeros.)"""
    uri = pool.create("vol", 16 * MIB)
    qemu_io(uri, f"write -z -u 0 {8 * MIB}")
    assert pool.used_blocks() == 0, "write-zeroes (may unmap) of unprovisioned blocks provisioned them"
    check_pattern(uri, 0x00, 0, 16 * MIB)
    # A sparse image copied in: only its data takes blocks.
    image = write_file(tmp_path / "sparse.img", pattern(5, MIB), 16 * MIB)
    run(program("nbdcopy"), image, uri)
    assert pool.used_blocks() == MIB // BLOCK, "nbdcopy of a sparse image provisioned its holes"
