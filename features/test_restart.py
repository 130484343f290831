"""The daemon stops and starts again on the same state directory: after a clean stop everything is
there; after kill -9 everything a client flushed, and every command that was answered, is there;
a second daemon on the same directory is refused."""
import subprocess

from conftest import (BLOCK, check_pattern, ours, pattern, program, python_nbd, run, wait_for, write_file,
                      write_pattern)

MIB = 1 << 20


def test_restart_after_a_clean_stop(pool, tmp_path):
    origin = write_file(tmp_path / "origin.img", pattern(21, 2 * MIB))
    a = pool.create("a", 8 * MIB)
    write_pattern(a, 0x61, 0, 3 * MIB)
    pool.cli("snapshot", "a", "a-snap")
    write_pattern(a, 0x62, 0, MIB)
    ext = pool.create("ext", None, origin=origin)
    write_pattern(ext, 0x63, BLOCK, 4096)
    pool.cli("resize", "a", "--size", "12M")
    before = pool.volumes()
    status_before = pool.status()

    pool.stop()
    pool.start()
    assert pool.volumes() == before
    after = pool.status()
    assert after["pool"]["transaction_id"] == status_before["pool"]["transaction_id"]
    assert after["pool"]["data"] == status_before["pool"]["data"]
    check_pattern(a, 0x62, 0, MIB)
    check_pattern(a, 0x61, MIB, 2 * MIB)
    check_pattern(pool.uri("a-snap"), 0x61, 0, 3 * MIB)
    check_pattern(ext, 0x63, BLOCK, 4096)
    nbd = python_nbd()
    h = nbd.NBD()
    h.connect_uri(ext)
    try:
        assert h.pread(BLOCK, 0) == pattern(21, BLOCK)         # from the origin
    finally:
        h.shutdown()

    # `thinpool stop` is a clean stop too.
    r = pool.cli("stop")
    assert pool.exit_status() == 0, r.stdout
    pool.check_metadata()
    pool.start()
    assert pool.volumes() == before
    write_pattern(pool.uri("a"), 0x64, 11 * MIB, MIB)       # inside the resized end
    check_pattern(pool.uri("a"), 0x64, 11 * MIB, MIB)


def test_restart_after_kill_9(pool, tmp_path):
    a = pool.create("a", 32 * MIB)
    write_pattern(a, 0x71, 0, 4 * MIB, flush=True)
    pool.cli("snapshot", "a", "snap")
    write_pattern(a, 0x72, 0, MIB, flush=True)
    # Answered commands are durable, even right before the crash.
    pool.create("b", 4 * MIB)
    before = pool.volumes()

    # A writer is busy on another range when the daemon dies.
    fio = subprocess.Popen([program("fio"), "--name=busy", "--ioengine=nbd", f"--uri={a}", "--rw=randwrite",
                            "--bs=4k", "--offset=16M", "--size=16M", "--iodepth=16", "--time_based",
                            "--runtime=60"], cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: pool.volume_status("a")["connections"] == 1, "fio to connect")
        wait_for(lambda: pool.volume_status("a")["mapped_blocks"] > 64 + 8, "fio to provision blocks")
        pool.kill()
        fio.wait(timeout=60)                                 # it fails once the server is gone
    finally:
        if fio.poll() is None:
            fio.kill()
            fio.wait()

    pool.check_metadata()                                   # crash-consistent as it is
    pool.start()
    assert pool.volumes() == before
    check_pattern(a, 0x72, 0, MIB)
    check_pattern(a, 0x71, MIB, 3 * MIB)
    check_pattern(pool.uri("snap"), 0x71, 0, 4 * MIB)
    write_pattern(pool.uri("b"), 0x73, 0, MIB)
    check_pattern(pool.uri("b"), 0x73, 0, MIB)

    # A crash right after a write that was flushed: it is there after the restart.
    write_pattern(pool.uri("b"), 0x74, MIB, 4096, flush=True)
    pool.kill()
    pool.start()
    check_pattern(pool.uri("b"), 0x74, MIB, 4096)


def test_a_second_daemon_on_the_same_directory_is_refused(pool):
    pool.create("vol", MIB)
    r = run(ours("thinpool"), "run", "--dir", pool.dir, "--data-size", "1G", "--metadata-size", "16M",
            check=False, timeout=30)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "already running" in r.stderr or "another thinpool daemon" in r.stderr, r.stderr
    assert pool.running()
    assert list(pool.volumes()) == ["vol"]
    write_pattern(pool.uri("vol"), 0x75, 0, 4096)
