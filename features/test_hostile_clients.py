"""Clients that misbehave, on the NBD socket and on the control socket: each gets an error or a
closed connection, and the daemon goes on serving everyone else (and still stops cleanly, which
the fixture checks)."""
import os
import struct
import time

import pytest

from conftest import (BLOCK, check_pattern, closed_by_peer, errno_name, python_nbd, recv_exact, unix_connect,
                      wait_for, write_pattern)

MIB = 1 << 20

# The NBD protocol's numbers (https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md).
IHAVEOPT = 0x49484156454F5054
OPT_REPLY_MAGIC = 0x0003E889045565A9
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698
CLIENT_FLAGS = 1 | 2                 # FIXED_NEWSTYLE, NO_ZEROES
OPT_EXPORT_NAME, OPT_ABORT, OPT_LIST, OPT_GO = 1, 2, 3, 7
REP_ACK, REP_SERVER, REP_INFO = 1, 2, 3
REP_ERR_UNKNOWN = 0x80000006
CMD_READ, CMD_WRITE, CMD_DISC, CMD_FLUSH = 0, 1, 2, 3
EINVAL, ENOSPC = 22, 28


class RawNBD:
    """Just enough of a fixed-newstyle client to say things libnbd would not."""

    def __init__(self, pool):
        self.s = unix_connect(pool.nbd_socket)

    def greeting(self):
        magic, opt, flags = struct.unpack(">8sQH", recv_exact(self.s, 18))
        assert magic == b"NBDMAGIC" and opt == IHAVEOPT, (magic, opt)
        assert flags & 1, "the server does not offer fixed newstyle"
        self.s.sendall(struct.pack(">I", CLIENT_FLAGS))

    def option(self, opt, data=b""):
        self.s.sendall(struct.pack(">QII", IHAVEOPT, opt, len(data)) + data)

    def option_reply(self):
        magic, opt, typ, length = struct.unpack(">QIII", recv_exact(self.s, 20))
        assert magic == OPT_REPLY_MAGIC, hex(magic)
        return opt, typ, recv_exact(self.s, length)

    def go(self, name):
        """NBD_OPT_GO; the export's size, or the error reply type."""
        self.option(OPT_GO, struct.pack(">I", len(name)) + name.encode() + struct.pack(">H", 0))
        size = None
        while True:
            opt, typ, data = self.option_reply()
            assert opt == OPT_GO
            if typ == REP_INFO and struct.unpack(">H", data[:2])[0] == 0:
                size = struct.unpack(">Q", data[2:10])[0]
            elif typ == REP_ACK:
                return size
            elif typ & 0x80000000:
                return typ

    def request(self, cmd, offset, length, cookie=1, payload=b"", flags=0):
        self.s.sendall(struct.pack(">IHHQQI", REQUEST_MAGIC, flags, cmd, cookie, offset, length) + payload)

    def simple_reply(self, length=0):
        """(error, cookie, data) of a simple reply (no structured replies were negotiated)."""
        magic, error, cookie = struct.unpack(">IIQ", recv_exact(self.s, 16))
        assert magic == SIMPLE_REPLY_MAGIC, hex(magic)
        return error, cookie, recv_exact(self.s, length) if error == 0 and length else b""

    def close(self):
        self.s.close()


def still_serving(pool, name="vol", byte=0x3c):
    write_pattern(pool.uri(name), byte, 0, 4096)
    check_pattern(pool.uri(name), byte, 0, 4096)


def no_connections(pool, name="vol"):
    wait_for(lambda: pool.volume_status(name)["connections"] == 0, f"the connections to {name} to end")


def test_bad_handshakes_are_closed(pool):
    pool.create("vol", 4 * MIB)
    # Connect and leave at once, many times.
    for _ in range(50):
        unix_connect(pool.nbd_socket).close()
    # Leave after part of the client flags.
    c = RawNBD(pool)
    recv_exact(c.s, 18)
    c.s.sendall(b"\x00\x00")
    c.close()
    # An option with a bad magic.
    c = RawNBD(pool)
    c.greeting()
    c.s.sendall(struct.pack(">QII", 0x1122334455667788, OPT_GO, 0))
    assert closed_by_peer(c.s), "a bad option magic did not end the connection"
    c.close()
    # An option length the server will not read.
    c = RawNBD(pool)
    c.greeting()
    c.s.sendall(struct.pack(">QII", IHAVEOPT, OPT_GO, 0xFFFFFFF0))
    assert closed_by_peer(c.s), "a 4 GiB option did not end the connection"
    c.close()
    # A half-sent option, then silence, while someone else works.
    idle = RawNBD(pool)
    idle.greeting()
    idle.s.sendall(struct.pack(">QI", IHAVEOPT, OPT_GO))
    still_serving(pool)
    idle.close()
    # Garbage instead of the client flags.
    c = RawNBD(pool)
    recv_exact(c.s, 18)
    c.s.sendall(os.urandom(4096))
    assert closed_by_peer(c.s), "garbage in the handshake did not end the connection"
    c.close()
    still_serving(pool)


def test_options_for_unknown_exports(pool):
    pool.create("vol", 4 * MIB)
    c = RawNBD(pool)
    c.greeting()
    assert c.go("nosuch") == REP_ERR_UNKNOWN
    assert c.go("../vol") == REP_ERR_UNKNOWN
    c.option(OPT_LIST)
    names = []
    while True:
        _, typ, data = c.option_reply()
        if typ == REP_ACK:
            break
        assert typ == REP_SERVER
        n = struct.unpack(">I", data[:4])[0]
        names.append(data[4:4 + n].decode())
    assert names == ["vol"]
    assert c.go("vol") == 4 * MIB
    c.request(CMD_DISC, 0, 0)
    c.close()
    # The old way to pick an export: a wrong name ends the connection.
    c = RawNBD(pool)
    c.greeting()
    c.option(OPT_EXPORT_NAME, b"nosuch")
    assert closed_by_peer(c.s)
    c.close()
    nbd = python_nbd()
    h = nbd.NBD()
    with pytest.raises(nbd.Error):
        h.connect_uri(pool.uri("nosuch"))
    still_serving(pool)


def test_bad_requests_get_errors_and_the_connection_goes_on(pool):
    pool.create("vol", 4 * MIB)
    c = RawNBD(pool)
    c.greeting()
    assert c.go("vol") == 4 * MIB
    c.request(CMD_READ, 4 * MIB, 4096, cookie=1)                        # past the end
    assert c.simple_reply()[:2] == (EINVAL, 1)
    c.request(CMD_WRITE, 4 * MIB - 512, 1024, cookie=2, payload=b"\x01" * 1024)
    assert c.simple_reply()[:2] == (ENOSPC, 2)                         # its payload was skipped
    c.request(CMD_READ, 2**64 - 512, 1024, cookie=3)                   # offset + length overflows
    assert c.simple_reply()[:2] == (EINVAL, 3)
    c.request(CMD_READ, 1, 512, cookie=4)                              # unaligned
    assert c.simple_reply()[:2] == (EINVAL, 4)
    c.request(CMD_READ, 0, 0xFFFFFFFF & ~511, cookie=5)               # longer than the maximum
    assert c.simple_reply()[:2] == (EINVAL, 5)
    c.request(99, 0, 512, cookie=6)                                    # unknown command
    assert c.simple_reply()[:2] == (EINVAL, 6)
    c.request(CMD_FLUSH, 0, 512, cookie=7)                             # a flush with a length
    assert c.simple_reply()[:2] == (EINVAL, 7)
    c.request(CMD_WRITE, 0, 512, cookie=8, payload=b"\x02" * 512)
    assert c.simple_reply() == (0, 8, b"")
    c.request(CMD_READ, 0, 512, cookie=9)
    assert c.simple_reply(512) == (0, 9, b"\x02" * 512)
    # A request with a bad magic: framing is lost, the connection ends.
    c.s.sendall(struct.pack(">IHHQQI", 0xDEADBEEF, 0, CMD_READ, 10, 0, 512))
    assert closed_by_peer(c.s)
    c.close()
    no_connections(pool)
    # A write announcing a payload far beyond what the server takes ends the connection too.
    c = RawNBD(pool)
    c.greeting()
    c.go("vol")
    c.request(CMD_WRITE, 0, 0xFFFFFE00, cookie=11)
    assert closed_by_peer(c.s)
    c.close()
    no_connections(pool)
    still_serving(pool)


def test_libnbd_without_client_checks(pool):
    nbd = python_nbd()
    pool.create("vol", 4 * MIB)
    h = nbd.NBD()
    h.set_strict_mode(0)                 # let the server see what libnbd would refuse itself
    h.connect_uri(pool.uri("vol"))
    try:
        for op, want in ((lambda: h.pread(4096, 4 * MIB), "EINVAL"),
                         (lambda: h.pwrite(b"x" * 4096, 4 * MIB - 512), "ENOSPC"),
                         (lambda: h.pread(100, 3), "EINVAL"),
                         (lambda: h.pwrite(b"x" * 100, 0), "EINVAL"),
                         (lambda: h.trim(BLOCK, 4 * MIB), "EINVAL"),
                         (lambda: h.zero(BLOCK, 4 * MIB - 512), "ENOSPC"),
                         (lambda: h.flush(nbd.CMD_FLAG_REQ_ONE), "EINVAL")):
            with pytest.raises(nbd.Error) as e:
                op()
            assert errno_name(e.value) == want, e.value
        h.pwrite(b"\x44" * 4096, 0)
        assert h.pread(4096, 0) == b"\x44" * 4096
    finally:
        h.shutdown()


def test_a_client_that_does_not_read_its_replies(pool):
    pool.create("vol", 64 * MIB)
    c = RawNBD(pool)
    c.greeting()
    c.go("vol")
    c.s.setblocking(False)
    sent = 0
    try:
        for i in range(4096):            # 256 MiB of reads asked for, none of the replies read
            c.s.send(struct.pack(">IHHQQI", REQUEST_MAGIC, 0, CMD_READ, i, (i % 1024) * BLOCK, BLOCK))
            sent += 1
    except BlockingIOError:
        pass                             # the server stopped reading: backpressure
    assert sent > 0
    still_serving(pool)
    c.close()
    no_connections(pool)


def test_many_connections_at_once(pool):
    nbd = python_nbd()
    pool.create("vol", 32 * MIB)
    handles = []
    try:
        for i in range(32):
            h = nbd.NBD()
            h.connect_uri(pool.uri("vol"))
            handles.append(h)
        assert pool.volume_status("vol")["connections"] == 32
        for i, h in enumerate(handles):
            h.pwrite(bytes([i]) * BLOCK, i * MIB)
        for i, h in enumerate(handles):
            other = handles[(i + 1) % len(handles)]     # multi-conn: one sees what another wrote
            assert other.pread(BLOCK, i * MIB) == bytes([i]) * BLOCK
    finally:
        for h in handles:
            h.shutdown()
    no_connections(pool)


def control_exchange(pool, data, timeout=10):
    """Sends raw bytes to the control socket; what comes back before the daemon closes."""
    s = unix_connect(pool.control_socket, timeout=timeout)
    try:
        s.sendall(data)
        out = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return out
            out += chunk
    finally:
        s.close()


@pytest.mark.parametrize("data", [
    b"\n",
    b"frobnicate\n",
    b"list extra words\n",
    b"create %zz size=1\n",
    b"create a\x01b size=1048576\n",
    b"create  vol size=1\n",
    b"\xff\xfe\x00\x01garbage\n",
    b"x" * (64 * 1024 + 10) + b"\n",
], ids=["empty", "unknown", "extra", "bad-escape", "control-char", "double-space", "binary", "too-long"])
def test_control_socket_garbage(pool, data):
    pool.create("vol", MIB)
    answer = control_exchange(pool, data)
    assert answer == b"" or answer.startswith(b"error "), answer[:200]
    assert list(pool.volumes()) == ["vol"]


def test_control_socket_slow_and_vanishing_clients(pool):
    pool.create("vol", MIB)
    for _ in range(50):
        unix_connect(pool.control_socket).close()
    # Half a request, then silence: the others are still answered meanwhile.
    slow = unix_connect(pool.control_socket)
    slow.sendall(b"li")
    started = time.monotonic()
    assert list(pool.volumes()) == ["vol"]
    assert time.monotonic() - started < 10
    slow.close()
    # A request sent, and the client gone before the answer.
    s = unix_connect(pool.control_socket)
    s.sendall(b"status json\n")
    s.close()
    # An events subscriber that never reads, and one that leaves.
    quiet = unix_connect(pool.control_socket)
    quiet.sendall(b"events\n")
    gone = unix_connect(pool.control_socket)
    gone.sendall(b"events\n")
    gone.close()
    pool.create("vol2", MIB)
    assert sorted(pool.volumes()) == ["vol", "vol2"]
    quiet.close()


def test_shutdown_with_a_stuck_client(pool):
    """SIGTERM while a client neither reads nor sends: the daemon still exits 0 in time (the
    fixture's stop checks it)."""
    pool.create("vol", 64 * MIB)
    stuck = RawNBD(pool)
    stuck.greeting()
    stuck.go("vol")
    stuck.s.setblocking(False)
    try:
        for i in range(2048):
            stuck.s.send(struct.pack(">IHHQQI", REQUEST_MAGIC, 0, CMD_READ, i, (i % 1024) * BLOCK, BLOCK))
    except BlockingIOError:
        pass
    idle = RawNBD(pool)
    idle.greeting()                      # mid-handshake
    started = time.monotonic()
    try:
        pool.stop()
    finally:
        stuck.close()
        idle.close()
    assert time.monotonic() - started < 30
