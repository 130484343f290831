"""Volumes with an external origin: unprovisioned blocks read from a read-only file, writes go to
the pool, and block status reports the origin's ranges as data, not holes."""
from conftest import (BLOCK, check_pattern, holes, ours, pattern, program, python_nbd, run, sha256, write_file,
                      write_pattern)

MIB = 1 << 20


def read_volume(uri, tmp_path, name):
    out = tmp_path / name
    run(program("nbdcopy"), uri, out)
    return out.read_bytes()


def test_reads_come_from_the_origin_and_writes_do_not_touch_it(pool, tmp_path):
    data = pattern(11, 6 * MIB) + bytes(MIB) + pattern(12, MIB)   # zeros inside the origin too
    origin = write_file(tmp_path / "origin.img", data)
    digest = sha256(origin)
    pool.create("ext", None, origin=origin)                      # the size is the origin's
    pool.create("big", 16 * MIB, origin=origin)
    vols = pool.volumes()
    assert vols["ext"]["size"] == 8 * MIB and vols["ext"]["origin"] == str(origin)
    assert vols["big"]["size"] == 16 * MIB
    ext, big = pool.uri("ext"), pool.uri("big")

    assert read_volume(ext, tmp_path, "ext.img") == data
    assert read_volume(big, tmp_path, "big.img") == data + bytes(8 * MIB)   # zeros past the origin's end
    # Origin ranges are data to a client (copying tools skip holes); only past the origin is a hole.
    assert holes(ext) == []
    assert holes(big) == [(8 * MIB, 8 * MIB)]

    # A partial write provisions its block from the origin: the rest of the block keeps its data.
    write_pattern(ext, 0x7e, MIB + 4096, 4096)
    nbd = python_nbd()
    h = nbd.NBD()
    h.connect_uri(ext)
    try:
        got = h.pread(BLOCK, MIB)
        want = data[MIB:MIB + 4096] + b"\x7e" * 4096 + data[MIB + 8192:MIB + BLOCK]
        assert got == want
        h.pwrite(b"\x7f" * BLOCK, 2 * MIB, nbd.CMD_FLAG_FUA)
        assert h.pread(BLOCK, 2 * MIB) == b"\x7f" * BLOCK
        assert h.pread(BLOCK, 3 * MIB) == data[3 * MIB:3 * MIB + BLOCK]
    finally:
        h.shutdown()
    assert sha256(origin) == digest, "writing the volume changed its external origin"
    assert pool.volume_status("ext")["mapped_blocks"] == 2
    assert holes(ext) == []

    # A snapshot keeps the origin; the other volume on the same origin is untouched.
    pool.cli("snapshot", "ext", "snap")
    assert pool.volumes()["snap"]["origin"] == str(origin)
    assert read_volume(pool.uri("snap"), tmp_path, "snap.img") == read_volume(ext, tmp_path, "ext2.img")
    assert read_volume(big, tmp_path, "big2.img")[:8 * MIB] == data
    # Discarding a provisioned block goes back to the origin's data.
    h = nbd.NBD()
    h.connect_uri(ext)
    try:
        h.trim(BLOCK, 2 * MIB)
        assert h.pread(BLOCK, 2 * MIB) == data[2 * MIB:2 * MIB + BLOCK]
    finally:
        h.shutdown()


def test_origin_with_an_odd_size(pool, tmp_path):
    """The origin is read in whole sectors, as a loop device over the file shows it: the volume
    takes the origin's size rounded down to a sector, says so, and reads zeros past the origin."""
    data = pattern(13, 3 * BLOCK + 1000)
    origin = write_file(tmp_path / "odd.img", data)
    r = pool.cli("create", "odd", "--origin", str(origin))
    assert "488 bytes are a partial sector" in r.stdout, r.stdout + r.stderr
    size = pool.volumes()["odd"]["size"]
    assert size == 3 * BLOCK + 512                               # whole sectors of the origin
    got = read_volume(pool.uri("odd"), tmp_path, "odd.out")
    assert got == data[:size]
    run(ours("thinpool"), "--dir", pool.dir, "resize", "odd", "--size", str(3 * BLOCK + 1024))
    check_pattern(pool.uri("odd"), 0x00, 3 * BLOCK + 512, 512)   # zeros past the origin's end


def test_relative_origin_path_and_bad_origins(pool, tmp_path):
    write_file(tmp_path / "rel.img", pattern(14, MIB))
    run(ours("thinpool"), "--dir", pool.dir, "create", "rel", "--origin", "rel.img", cwd=tmp_path)
    assert pool.volumes()["rel"]["origin"] == str(tmp_path / "rel.img")
    for args, message in ((["--origin", str(tmp_path / "missing.img")], "missing.img"),
                          (["--origin", str(tmp_path)], "not a regular file")):
        r = pool.cli("create", "bad", *args, check=False)
        assert r.returncode == 1, r.stdout + r.stderr
        assert message in r.stderr and r.stderr.count("\n") == 1, r.stderr
    assert sorted(pool.volumes()) == ["rel"]
