"""A real file system on a thin volume: nbdfuse turns the volume into a file, a loop device into a
block device, then ext4 is made, mounted, written, checked and trimmed; fstrim gives the blocks of
deleted files back to the pool. Needs root, /dev/fuse and loop devices."""
import hashlib
import os
import subprocess

import pytest

from conftest import BLOCK, pattern, program, run, sha256, unavailable, wait_for

MIB = 1 << 20


def require_kernel_facilities():
    if os.geteuid() != 0:
        unavailable("needs root (loop devices, mount)")
    if not os.path.exists("/dev/fuse"):
        unavailable("/dev/fuse is missing")
    if not os.path.exists("/dev/loop-control"):
        unavailable("loop devices are missing (/dev/loop-control)")
    with open("/proc/filesystems") as f:
        kinds = f.read().split()
    for fs in ("fuse", "ext4"):
        if fs not in kinds:
            unavailable(f"the kernel has no {fs} file system")


class Stack:
    """nbdfuse -> loop device -> ext4 mount, torn down in reverse order whatever happened."""

    def __init__(self, tmp_path, uri):
        self.fuse_dir = tmp_path / "fuse"
        self.mnt = tmp_path / "mnt"
        self.fuse_dir.mkdir()
        self.mnt.mkdir()
        self.uri = uri
        self.nbdfuse = None
        self.loop = None
        self.mounted = False

    def attach(self):
        self.nbdfuse = subprocess.Popen([program("nbdfuse"), str(self.fuse_dir), self.uri],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        image = self.fuse_dir / "nbd"

        def mounted():
            if self.nbdfuse.poll() is not None:
                pytest.fail(f"nbdfuse exited with {self.nbdfuse.returncode}: {self.nbdfuse.stderr.read()!r}")
            return os.path.ismount(self.fuse_dir) and image.exists()
        wait_for(mounted, "nbdfuse to mount the volume", timeout=30)
        self.loop = run(program("losetup"), "--find", "--show", image).stdout.strip()
        assert self.loop.startswith("/dev/loop"), self.loop

    def mount(self):
        run(program("mount"), "-t", "ext4", self.loop, self.mnt)
        self.mounted = True

    def umount(self):
        if self.mounted:
            run(program("umount"), self.mnt, timeout=120)
            self.mounted = False

    def teardown(self):
        errors = []
        for step in (self.umount, self.detach_loop, self.unmount_fuse):
            try:
                step()
            except BaseException as e:   # keep tearing down; report everything at the end
                errors.append(f"{step.__name__}: {e}")
        if errors:
            pytest.fail("tearing down the file system stack failed:\n" + "\n".join(errors))

    def detach_loop(self):
        if self.loop:
            run(program("losetup"), "-d", self.loop, timeout=60)
            self.loop = None

    def unmount_fuse(self):
        if self.nbdfuse is None:
            return
        if os.path.ismount(self.fuse_dir):
            run(program("fusermount3"), "-u", self.fuse_dir, timeout=60)
        try:
            self.nbdfuse.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.nbdfuse.kill()
            self.nbdfuse.wait()
        self.nbdfuse.stderr.close()
        self.nbdfuse = None


def test_ext4_on_a_thin_volume_and_fstrim(pool, tmp_path):
    require_kernel_facilities()
    for p in ("nbdfuse", "fusermount3", "losetup", "mount", "umount", "mkfs.ext4", "e2fsck", "fstrim"):
        program(p)
    uri = pool.create("fs", 256 * MIB)
    stack = Stack(tmp_path, uri)
    try:
        stack.attach()
        run(program("mkfs.ext4"), "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", stack.loop,
            timeout=120)
        stack.mount()
        empty_fs = pool.used_blocks()
        big = pattern(31, 32 * MIB)
        (stack.mnt / "big").write_bytes(big)
        for i in range(20):
            (stack.mnt / f"small{i}").write_bytes(pattern(100 + i, 10000 + i))
        os.sync()
        run("sync", "-f", stack.mnt)
        written = pool.used_blocks()
        assert written >= empty_fs + 32 * MIB // BLOCK, (empty_fs, written)

        # The data went through the whole stack: unmount (dropping the file system's cache),
        # check the file system, mount again and read.
        stack.umount()
        run(program("e2fsck"), "-fn", stack.loop, timeout=120)
        stack.mount()
        assert sha256(stack.mnt / "big") == hashlib.sha256(big).hexdigest()
        assert (stack.mnt / "small7").read_bytes() == pattern(107, 10007)

        (stack.mnt / "big").unlink()
        run("sync", "-f", stack.mnt)
        run(program("fstrim"), "-v", stack.mnt, timeout=120)
        trimmed = pool.used_blocks()
        # Nearly all of the 512 blocks of the deleted file come back (ext4 metadata may keep a few).
        assert trimmed <= written - 32 * MIB // BLOCK + 16, (written, trimmed)
    finally:
        stack.teardown()
    wait_for(lambda: pool.volume_status("fs")["connections"] == 0, "nbdfuse's connections to end")
