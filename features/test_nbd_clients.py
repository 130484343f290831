"""Real NBD clients against `thinpool run`: qemu-io, qemu-img, nbdinfo, nbdcopy and fio's nbd
engine read and write volumes over the daemon's Unix socket."""
import json

from conftest import (BLOCK, check_pattern, holes, nbd_map, pattern, program, qemu_io, qemu_io_failed, run,
                      sha256, write_file, write_pattern)

MIB = 1 << 20


def test_qemu_io_writes_and_reads_patterns(pool):
    size = 64 * MIB
    uri = pool.create("vol", size)
    write_pattern(uri, 0x11, 0, MIB)
    write_pattern(uri, 0x22, 5 * MIB + 512, 4096)           # inside a block, sector-aligned
    write_pattern(uri, 0x33, size - BLOCK, BLOCK)           # the last block
    check_pattern(uri, 0x11, 0, MIB)
    check_pattern(uri, 0x22, 5 * MIB + 512, 4096)
    check_pattern(uri, 0x00, 5 * MIB, 512)                  # the rest of that block reads zeros
    check_pattern(uri, 0x00, 5 * MIB + 4608, BLOCK - 4608)
    check_pattern(uri, 0x33, size - BLOCK, BLOCK)
    check_pattern(uri, 0x00, MIB, 4 * MIB)                  # never written
    # The check itself catches a mismatch (qemu-io may exit 0 on one).
    r = qemu_io(uri, "read -P 0x99 0 4096", check=False, read_only=True)
    assert qemu_io_failed(r), r.stdout
    # Three blocks were provisioned for 1 MiB + 4 KiB + 64 KiB of writes.
    assert pool.volume_status("vol")["mapped_blocks"] == MIB // BLOCK + 2


def test_qemu_img_convert_and_compare(pool, tmp_path):
    size = 16 * MIB
    uri = pool.create("vol", size)
    local = write_file(tmp_path / "local.img", pattern(1, 6 * MIB) + bytes(2 * MIB) + pattern(2, 3 * MIB), size)
    qemu_img = program("qemu-img")
    run(qemu_img, "convert", "-n", "-f", "raw", "-O", "raw", local, uri)
    r = run(qemu_img, "compare", "-f", "raw", "-F", "raw", local, uri)
    assert "identical" in r.stdout, r.stdout
    back = tmp_path / "back.img"
    run(qemu_img, "convert", "-f", "raw", "-O", "raw", uri, back)
    assert sha256(back) == sha256(local)
    # One changed byte in the volume is found at its offset.
    write_pattern(uri, 0xff, 7 * MIB, 512)
    r = run(qemu_img, "compare", "-f", "raw", "-F", "raw", local, uri, check=False)
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"offset {7 * MIB}" in r.stdout, r.stdout


def test_nbdinfo_describes_the_export(pool):
    uri = pool.create("vol", 48 * MIB)
    pool.create("other", 4 * MIB)
    info = json.loads(run(program("nbdinfo"), "--json", uri).stdout)
    assert info["structured"] is True
    exp = info["exports"][0]
    assert exp["export-name"] == "vol"
    assert exp["export-size"] == 48 * MIB
    assert exp["block_size_preferred"] == BLOCK
    assert "base:allocation" in exp["contexts"]
    for flag in ("can_flush", "can_fua", "can_trim", "can_zero", "can_multi_conn"):
        assert exp[flag] is True, (flag, exp)
    assert exp["is_read_only"] is False
    listed = json.loads(run(program("nbdinfo"), "--list", "--json", uri).stdout)
    assert sorted(e["export-name"] for e in listed["exports"]) == ["other", "vol"]


def test_nbdinfo_map_shows_holes_until_written(pool):
    size = 16 * MIB
    uri = pool.create("vol", size)
    assert nbd_map(uri) == [(0, size, 3, "hole,zero")]
    write_pattern(uri, 0x5a, 3 * BLOCK, 2 * BLOCK)
    write_pattern(uri, 0x5b, 10 * BLOCK + 4096, 4096)       # a partial write provisions its whole block
    assert holes(uri) == [(0, 3 * BLOCK), (5 * BLOCK, 5 * BLOCK), (11 * BLOCK, size - 11 * BLOCK)]
    data = [(o, n) for o, n, t, _ in nbd_map(uri) if t == 0]
    assert data == [(3 * BLOCK, 2 * BLOCK), (10 * BLOCK, BLOCK)]


def test_nbdcopy_both_ways(pool, tmp_path):
    size = 24 * MIB
    uri = pool.create("vol", size)
    # Data, a hole in the middle (nbdcopy zeroes it), data, and a hole at the end.
    local = write_file(tmp_path / "in.img", pattern(3, 8 * MIB), size)
    with open(local, "r+b") as f:
        f.seek(12 * MIB)
        f.write(pattern(4, 4 * MIB))
    # Something to overwrite with zeros where the source has its hole.
    write_pattern(uri, 0x77, 8 * MIB, 4 * MIB)
    nbdcopy = program("nbdcopy")
    run(nbdcopy, "--flush", local, uri)
    out = tmp_path / "out.img"
    run(nbdcopy, uri, out)
    assert out.stat().st_size == size
    assert sha256(out) == sha256(local)
    check_pattern(uri, 0, 8 * MIB, 4 * MIB)


def test_fio_nbd_engine_verifies(pool, tmp_path):
    uri = pool.create("vol", 16 * MIB)
    r = run(program("fio"), "--name=verify", "--ioengine=nbd", f"--uri={uri}", "--rw=randwrite", "--bs=4k",
            "--size=16M", "--iodepth=16", "--verify=crc32c", "--verify_fatal=1", "--output-format=json",
            timeout=120, cwd=tmp_path)
    # The nbd engine prints a line before the JSON.
    job = json.loads(r.stdout[r.stdout.index("{"):])["jobs"][0]
    assert job["error"] == 0, job
    assert job["write"]["io_bytes"] == 16 * MIB
    assert job["read"]["io_bytes"] == 16 * MIB      # every block read back and verified
    assert pool.volume_status("vol")["mapped_blocks"] == 16 * MIB // BLOCK
