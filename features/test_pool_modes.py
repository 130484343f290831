"""Pool modes seen by clients: running out of data space (with error_if_no_space, after the
no-space timeout, then growing the data file) and read-only pools."""
import json
import os
import re
import select
import subprocess
import time

import pytest

from conftest import (BLOCK, check_pattern, errno_name, ours, program, python_nbd, qemu_io, qemu_io_failed, run, sha256,
                      unix_connect, write_pattern)

MIB = 1 << 20


class EventStream:
    """A `thinpool events` subscription on the control socket (the protocol the client uses: the
    daemon answers "ok" once subscribed, so no event can slip by before the test goes on), its
    lines read with a deadline."""

    def __init__(self, pool):
        self.sock = unix_connect(pool.control_socket)
        self.sock.sendall(b"events\n")
        self.buf = b""
        status = self.wait_for_line("", timeout=30)
        assert status == "ok", f"`events` was answered {status!r}"

    def wait_for_line(self, needle, timeout=30):
        """The first line holding `needle`; fails at the deadline or when the stream ends."""
        deadline = time.monotonic() + timeout
        fd = self.sock.fileno()
        while True:
            lines = self.buf.split(b"\n")
            for i, line in enumerate(lines[:-1]):
                if needle.encode() in line:
                    self.buf = b"\n".join(lines[i + 1:])
                    return line.decode(errors="replace")
            left = deadline - time.monotonic()
            if left <= 0:
                pytest.fail(f"no `thinpool events` line with {needle!r} within {timeout} s; got {self.buf!r}")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 4096)
                if not chunk:
                    pytest.fail(f"`thinpool events` ended without a line with {needle!r}; got {self.buf!r}")
                self.buf += chunk

    def close(self):
        self.sock.close()


def write_error(uri, offset, length):
    """The errno name of a pwrite's error (strict client checks off, so the server decides), or None."""
    nbd = python_nbd()
    h = nbd.NBD()
    h.set_strict_mode(0)
    h.connect_uri(uri)
    try:
        h.pwrite(b"\xa5" * length, offset)
        return None
    except nbd.Error as e:
        return errno_name(e)
    finally:
        h.shutdown()


def test_out_of_data_space_with_error_if_no_space(pool_factory):
    pool = pool_factory("--feature", "error_if_no_space", "--low-water-mark", "4", data_size="1M")
    uri = pool.create("vol", 16 * MIB)
    events = EventStream(pool)
    try:
        # As in dm-thin, the event comes with the first allocation that finds at most 4 free blocks.
        write_pattern(uri, 0xe1, 0, 13 * BLOCK)
        assert "mode=write" in events.wait_for_line("data_low_water")
        write_pattern(uri, 0xe2, 13 * BLOCK, 3 * BLOCK)          # the last free blocks
        assert write_error(uri, MIB, BLOCK) == "ENOSPC"
        assert "out_of_data_space" in events.wait_for_line("mode_changed")
    finally:
        events.close()
    r = qemu_io(uri, f"write -P 0xe3 {2 * MIB} 4096", check=False)
    assert qemu_io_failed(r) and "No space left on device" in r.stdout + r.stderr, r.stdout + r.stderr

    st = pool.status()["pool"]
    assert st["mode"] == "out_of_data_space"
    assert st["data"]["used_blocks"] == st["data"]["total_blocks"] == 16
    assert st["error_if_no_space"] is True
    # Still serving: reads, rewrites of provisioned blocks, queries.
    check_pattern(uri, 0xe1, 0, 13 * BLOCK)
    check_pattern(uri, 0xe2, 13 * BLOCK, 3 * BLOCK)
    write_pattern(uri, 0xe4, 0, BLOCK)
    check_pattern(uri, 0xe4, 0, BLOCK)
    assert sorted(pool.volumes()) == ["vol"]

    # Growing the data file (a restart with a larger --data-size) gives room again.
    pool.stop()
    pool.set_option("--data-size", "4M")
    pool.start()
    st = pool.status()["pool"]
    assert st["mode"] == "write" and st["data"]["total_blocks"] == 64
    write_pattern(uri, 0xe5, MIB, MIB)
    check_pattern(uri, 0xe5, MIB, MIB)
    check_pattern(uri, 0xe4, 0, BLOCK)


def read_line(stream, what, timeout=30):
    """One line from a child's pipe, failing at the deadline or at end of file."""
    deadline = time.monotonic() + timeout
    buf = b""
    fd = stream.fileno()
    while not buf.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            pytest.fail(f"no line of {what} within {timeout} s; got {buf!r}")
        chunk = os.read(fd, 1)  # byte by byte: nothing past the line is taken from the pipe
        if not chunk:
            pytest.fail(f"{what} ended; got {buf!r}")
        buf += chunk
    return buf.decode(errors="replace")


def test_events_command_prints_low_water_and_mode_changes(pool_factory):
    """`thinpool events` itself: it says on stderr when it is subscribed, prints each event as one
    line on stdout, and exits 0 when the daemon stops."""
    pool = pool_factory("--feature", "error_if_no_space", "--low-water-mark", "4", data_size="1M")
    uri = pool.create("vol", 16 * MIB)
    proc = subprocess.Popen([str(ours("thinpool")), "--dir", str(pool.dir), "events"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert "following the pool's events on" in read_line(proc.stderr, "`thinpool events` stderr")
        write_pattern(uri, 0x5a, 0, 13 * BLOCK)
        low = read_line(proc.stdout, "`thinpool events`").split()
        assert low[1:3] == ["data_low_water", "mode=write"], low
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", low[0]), low
        write_pattern(uri, 0x5b, 13 * BLOCK, 3 * BLOCK)
        assert write_error(uri, MIB, BLOCK) == "ENOSPC"
        mode = read_line(proc.stdout, "`thinpool events`").split()
        assert mode[1:3] == ["mode_changed", "mode=out_of_data_space"], mode
        pool.stop()
        assert proc.wait(timeout=30) == 0
        assert proc.stdout.read() == b""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_out_of_data_space_after_the_timeout(pool_factory):
    """Without error_if_no_space a write waits for space, then fails once the no-space timeout
    passes; the pool keeps serving reads."""
    pool = pool_factory("--no-space-timeout", "1", data_size="1M")
    uri = pool.create("vol", 8 * MIB)
    write_pattern(uri, 0xe6, 0, MIB)
    r = qemu_io(uri, f"write -P 0xe7 {MIB} {BLOCK}", check=False, timeout=30)
    assert qemu_io_failed(r) and "No space left on device" in r.stdout + r.stderr, r.stdout + r.stderr
    assert pool.status()["pool"]["mode"] == "out_of_data_space"
    check_pattern(uri, 0xe6, 0, MIB)


@pytest.mark.parametrize("how", [["--read-only"], ["--feature", "read_only"]], ids=["read-only", "feature"])
def test_read_only_pool_refuses_writes(pool_factory, how):
    pool = pool_factory()
    uri = pool.create("vol", 4 * MIB)
    write_pattern(uri, 0x0f, 0, MIB)
    pool.stop()
    meta = pool.dir / "metadata"
    before = sha256(meta)

    pool.start(*how)
    st = pool.status()["pool"]
    assert st["mode"] == "read_only" and st["read_only"] is True
    info = json.loads(run(program("nbdinfo"), "--json", uri).stdout)["exports"][0]
    assert info["is_read_only"] is True
    check_pattern(uri, 0x0f, 0, MIB)
    # The server refuses what a careless client sends anyway.
    assert write_error(uri, 0, 4096) == "EPERM"
    nbd = python_nbd()
    h = nbd.NBD()
    h.set_strict_mode(0)
    h.connect_uri(uri)
    try:
        for op in (lambda: h.trim(BLOCK, 0), lambda: h.zero(BLOCK, 0)):
            with pytest.raises(nbd.Error) as e:
                op()
            assert errno_name(e.value) == "EPERM"
        assert h.pread(4096, 0) == b"\x0f" * 4096
    finally:
        h.shutdown()
    for args in (["create", "x", "--size", "1M"], ["snapshot", "vol", "s"], ["delete", "vol"],
                 ["message", "reserve_metadata_snap"]):
        r = pool.cli(*args, check=False)
        assert r.returncode == 1 and r.stderr.startswith("thinpool: "), (args, r.stderr)
    pool.stop()
    assert sha256(meta) == before, "a read-only pool changed its metadata"

    pool.start()
    write_pattern(uri, 0x1f, 0, 4096)                           # writable again
    check_pattern(uri, 0x1f, 0, 4096)
