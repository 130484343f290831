"""Shared pieces of the feature tests: a `thinpool run` daemon per test on a temporary directory,
real NBD clients run with timeouts, data patterns, and the daemon's log attached to every failure.

Binaries come from THINPOOL_BIN_DIR (default build/release). A test whose client program or
kernel facility is missing is skipped with the reason, or fails when THINPOOL_REQUIRE_CLIENTS=1
(CI sets it, so nothing is skipped silently there). Debian's thin_check (/usr/sbin) checks every
pool's metadata after its daemon stops; it is required when THINPOOL_REQUIRE_REFERENCE=1.
"""
import errno
import hashlib
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN_DIR = Path(os.environ.get("THINPOOL_BIN_DIR", ROOT / "build" / "release")).resolve()
REQUIRE_CLIENTS = os.environ.get("THINPOOL_REQUIRE_CLIENTS") == "1"
REQUIRE_REFERENCE = os.environ.get("THINPOOL_REQUIRE_REFERENCE") == "1"
REFERENCE_THIN_CHECK = Path("/usr/sbin/thin_check")

BLOCK = 64 << 10      # the pool's default data block size
START_TIMEOUT = 30    # seconds for a daemon to answer `list` after it is started
STOP_TIMEOUT = 30     # seconds for a daemon to exit after SIGTERM
LOG_TAIL = 12000      # characters of a daemon's log attached to a failure

# Program -> Debian package, for skip messages.
PACKAGES = {
    "qemu-io": "qemu-utils", "qemu-img": "qemu-utils", "qemu-nbd": "qemu-utils",
    "nbdinfo": "libnbd-bin", "nbdcopy": "libnbd-bin", "nbdsh": "libnbd-bin", "nbdfuse": "libnbd-bin",
    "nbdkit": "nbdkit", "fio": "fio", "fusermount3": "fuse3", "losetup": "mount", "mount": "mount",
    "umount": "mount", "fstrim": "util-linux", "mkfs.ext4": "e2fsprogs", "e2fsck": "e2fsprogs",
}


# ---- requirements -------------------------------------------------------------------------------

def unavailable(reason):
    """Skips the test, or fails it when THINPOOL_REQUIRE_CLIENTS=1."""
    if REQUIRE_CLIENTS:
        pytest.fail(f"{reason} (THINPOOL_REQUIRE_CLIENTS=1: required)")
    pytest.skip(reason)


def program(name):
    """Absolute path of a client program, looked up in PATH and the sbin directories."""
    path = shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
    if not path:
        unavailable(f"{name} is not installed (Debian package {PACKAGES.get(name, name)})")
    return path


def python_nbd():
    """The libnbd Python binding (python3-libnbd)."""
    try:
        import nbd
    except ImportError:
        unavailable("the libnbd Python binding is missing (Debian package python3-libnbd)")
    return nbd


def errno_name(error):
    """The errno name of an nbd.Error, e.g. ENOSPC (the binding gives the name or the number, by
    version)."""
    e = error.errno
    return errno.errorcode.get(e, str(e)) if isinstance(e, int) else e


def ours(name):
    path = BIN_DIR / name
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.fail(f"{path} not found: build it (cmake --preset release && cmake --build --preset release) "
                    f"or set THINPOOL_BIN_DIR")
    return path


# ---- running programs ---------------------------------------------------------------------------

def describe(r):
    return (f"$ {' '.join(map(str, r.args))}\nexit status {r.returncode}\n"
            f"--- stdout ---\n{r.stdout[-4000:]}\n--- stderr ---\n{r.stderr[-4000:]}")


def run(*args, timeout=60, check=True, input=None, env=None, cwd=None):
    """Runs a program to completion (text output); fails the test on a timeout, and on a non-zero
    exit status when `check`."""
    args = [str(a) for a in args]
    try:
        r = subprocess.run(args, capture_output=True, text=True, timeout=timeout, input=input, env=env, cwd=cwd,
                           errors="replace")
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"$ {' '.join(args)}\ndid not finish within {timeout} s\n"
                    f"--- stdout ---\n{e.stdout!r:.2000}\n--- stderr ---\n{e.stderr!r:.2000}")
    if check and r.returncode != 0:
        pytest.fail(describe(r))
    return r


def wait_for(condition, what, timeout=30, interval=0.05):
    """Polls `condition` until it returns a true value (returned), failing after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


# ---- data ---------------------------------------------------------------------------------------

def pattern(seed, size):
    """`size` deterministic pseudo-random bytes."""
    return random.Random(seed).randbytes(size)


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_file(path, data, size=None):
    """Writes `data` to a new file, then extends it (sparse) to `size`."""
    with open(path, "wb") as f:
        f.write(data)
        if size is not None:
            f.truncate(size)
    return path


# ---- qemu-io ------------------------------------------------------------------------------------

QEMU_IO_FAILURE = re.compile(r"Pattern verification failed|failed: |^qemu-io: ", re.M)


def qemu_io(uri, *commands, check=True, read_only=False, timeout=60):
    """Runs qemu-io commands on an NBD URI. Some qemu-io versions exit 0 when a pattern does not
    match or a request fails, so with `check` its output is searched for failures too."""
    args = [program("qemu-io"), "-f", "raw"] + (["-r"] if read_only else []) + [uri]
    for c in commands:
        args += ["-c", c]
    r = run(*args, check=False, timeout=timeout)
    if check and (r.returncode != 0 or QEMU_IO_FAILURE.search(r.stdout + r.stderr)):
        pytest.fail(describe(r))
    return r


def qemu_io_failed(r):
    return r.returncode != 0 or bool(QEMU_IO_FAILURE.search(r.stdout + r.stderr))


def write_pattern(uri, byte, offset, length, flush=False):
    cmds = [f"write -P {byte:#x} {offset} {length}"] + (["flush"] if flush else [])
    qemu_io(uri, *cmds)


def check_pattern(uri, byte, offset, length):
    qemu_io(uri, f"read -P {byte:#x} {offset} {length}", read_only=True)


# ---- nbdinfo ------------------------------------------------------------------------------------

def nbd_map(uri):
    """`nbdinfo --map` as (offset, length, type, description) tuples, type 0 data, bit 1 hole,
    bit 2 zero."""
    out = run(program("nbdinfo"), "--map", uri).stdout
    rows = []
    for line in out.splitlines():
        parts = line.split(None, 3)
        if len(parts) >= 3:
            rows.append((int(parts[0]), int(parts[1]), int(parts[2]), parts[3] if len(parts) > 3 else ""))
    return rows


def holes(uri):
    """The hole ranges of `nbdinfo --map`, merged, as (offset, length)."""
    out = []
    for off, length, typ, _ in nbd_map(uri):
        if not typ & 1:
            continue
        if out and out[-1][0] + out[-1][1] == off:
            out[-1] = (out[-1][0], out[-1][1] + length)
        else:
            out.append((off, length))
    return out


# ---- the daemon ---------------------------------------------------------------------------------

class Pool:
    """One `thinpool run` on a state directory, its log in a file beside it (appended across
    restarts), and the client commands against it."""

    def __init__(self, directory, args):
        self.dir = Path(directory)
        self.args = [str(a) for a in args]
        self.log_path = self.dir.parent / f"{self.dir.name}.log"
        self.proc = None
        self.checked_metadata = False  # thin_check ran on the metadata since the last stop
        self.killed = False            # the last exit was our SIGKILL

    # -- lifetime --

    def start(self, *extra, wait=True):
        """Starts the daemon (with the creation arguments plus `extra`) and waits until it answers."""
        self.dir.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(f"==== thinpool run --dir {self.dir} {' '.join(self.args + list(map(str, extra)))}\n".encode())
            log.flush()
            self.proc = subprocess.Popen([str(ours("thinpool")), "run", "--dir", str(self.dir), *self.args,
                                          *map(str, extra)], stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        self.checked_metadata = False
        self.killed = False
        if wait:
            self.wait_ready()
        return self

    def set_option(self, option, value):
        """Changes (or adds) an option of `thinpool run` for the next start."""
        if option in self.args:
            self.args[self.args.index(option) + 1] = str(value)
        else:
            self.args += [option, str(value)]

    def wait_ready(self):
        def answers():
            if self.proc.poll() is not None:
                self.fail(f"the daemon exited with status {self.proc.returncode} before answering")
            return self.cli("list", check=False, timeout=10).returncode == 0
        wait_for(answers, f"the daemon on {self.dir} to answer `thinpool list`", timeout=START_TIMEOUT)

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self, check_metadata=True):
        """SIGTERM, the daemon must exit 0 in time; then our and Debian's thin_check must pass."""
        if self.running():
            self.proc.send_signal(signal.SIGTERM)
            try:
                rc = self.proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                self.fail(f"the daemon did not exit within {STOP_TIMEOUT} s of SIGTERM (killed)")
            if rc != 0:
                self.fail(f"the daemon exited with status {rc} after SIGTERM (expected 0)")
        if check_metadata:
            self.check_metadata()

    def kill(self):
        """SIGKILL: a crash."""
        if self.running():
            self.proc.kill()
            self.proc.wait(timeout=STOP_TIMEOUT)
            self.killed = True

    def exit_status(self, timeout=STOP_TIMEOUT):
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.fail(f"the daemon did not exit within {timeout} s")

    def check_metadata(self):
        """Our thin_check and Debian's must both find the metadata clean."""
        meta = self.dir / "metadata"
        r = run(ours("thin_check"), meta, check=False)
        if r.returncode != 0:
            self.fail("our thin_check rejects the metadata:\n" + describe(r))
        if REFERENCE_THIN_CHECK.exists():
            r = run(REFERENCE_THIN_CHECK, meta, check=False)
            if r.returncode != 0:
                self.fail("Debian's thin_check rejects the metadata:\n" + describe(r))
        elif REQUIRE_REFERENCE:
            pytest.fail(f"{REFERENCE_THIN_CHECK} is missing (THINPOOL_REQUIRE_REFERENCE=1): "
                        f"install thin-provisioning-tools")
        self.checked_metadata = True

    def teardown(self):
        if self.proc is None:
            return
        if not self.running() and not self.killed and self.proc.returncode != 0:
            self.fail(f"the daemon exited with status {self.proc.returncode} during the test")
        if self.running() or not self.checked_metadata:
            self.stop()

    # -- clients --

    def cli(self, *args, check=True, timeout=60):
        """`thinpool --dir DIR ARGS`."""
        return run(ours("thinpool"), "--dir", self.dir, *args, check=check, timeout=timeout)

    def status(self):
        return json.loads(self.cli("status", "--json").stdout)

    def volumes(self):
        return {v["name"]: v for v in json.loads(self.cli("list", "--json").stdout)["volumes"]}

    def volume_status(self, name):
        for v in self.status()["volumes"]:
            if v["name"] == name:
                return v
        self.fail(f"no volume {name} in `status --json`")

    def used_blocks(self):
        return self.status()["pool"]["data"]["used_blocks"]

    def create(self, name, size, origin=None):
        args = ["create", name] + (["--size", str(size)] if size is not None else [])
        if origin is not None:
            args += ["--origin", str(origin)]
        self.cli(*args)
        return self.uri(name)

    @property
    def nbd_socket(self):
        return self.dir / "nbd.sock"

    @property
    def control_socket(self):
        return self.dir / "control.sock"

    def uri(self, name):
        return f"nbd+unix:///{name}?socket={self.nbd_socket}"

    # -- failures --

    def log_tail(self):
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return text if len(text) <= LOG_TAIL else "...\n" + text[-LOG_TAIL:]

    def fail(self, message):
        """Fails the test; the report hook below attaches the daemon's log."""
        pytest.fail(f"{message} (daemon log: {self.log_path})")


@pytest.fixture
def pool_factory(request, tmp_path):
    """make(*run_args, name="pool", data_size="1G", metadata_size="16M", start=True) -> Pool: a
    daemon on tmp_path/name. Every pool made is stopped at teardown (exit 0 after SIGTERM) and its metadata
    checked with our and Debian's thin_check."""
    pools = []
    request.node.thinpool_pools = pools

    def make(*args, name="pool", data_size="1G", metadata_size="16M", start=True):
        sizes = []
        if data_size:
            sizes += ["--data-size", data_size]
        if metadata_size:
            sizes += ["--metadata-size", metadata_size]
        p = Pool(tmp_path / name, sizes + list(args))
        pools.append(p)
        if start:
            p.start()
        return p

    yield make
    failures = []
    for p in pools:
        try:
            p.teardown()
        except BaseException as e:  # pytest.fail's exception is not an Exception
            p.kill()
            failures.append(str(e))
    if failures:
        pytest.fail("\n\n".join(failures), pytrace=False)


@pytest.fixture
def pool(pool_factory):
    """A running daemon on a fresh 1 GiB data / 16 MiB metadata pool."""
    return pool_factory()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Attaches the log of every daemon a failed test started."""
    outcome = yield
    rep = outcome.get_result()
    if rep.failed:
        for p in getattr(item, "thinpool_pools", []):
            rep.sections.append((f"thinpool daemon log {p.log_path}", p.log_tail()))


# ---- raw sockets --------------------------------------------------------------------------------

def unix_connect(path, timeout=10):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(str(path))
    return s


def recv_exact(s, n):
    data = b""
    while len(data) < n:
        chunk = s.recv(n - len(data))
        if not chunk:
            raise ConnectionError(f"connection closed after {len(data)} of {n} bytes")
        data += chunk
    return data


def closed_by_peer(s, timeout=10):
    """True when the peer closes the connection (EOF or reset) within `timeout`, reading and
    dropping whatever it still sends."""
    s.settimeout(timeout)
    try:
        while True:
            if not s.recv(65536):
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except socket.timeout:
        return False
    except OSError as e:
        return e.errno in (errno.ECONNRESET, errno.EPIPE)
