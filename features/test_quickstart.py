"""The README's quick start, run as written: start a pool, create a volume, write to it over NBD,
snapshot it, look at the status, back the snapshot up, stop.

QUICKSTART is what the README's "Quick start" section shows: the test fails when the two differ
(so a change to either shows up here)."""
import os
import re
import shlex

from conftest import BIN_DIR, ROOT, check_pattern, program, run

# Run in order from an empty directory; the first line is the daemon (the fixture runs it).
QUICKSTART = [
    "thinpool run &",
    "thinpool create vol --size 1G",
    "qemu-io -f raw -c 'write -P 0xab 0 1M' 'nbd+unix:///vol?socket=pool/nbd.sock'",
    "thinpool snapshot vol vol-snap",
    "qemu-io -f raw -c 'write -P 0xcd 0 64k' 'nbd+unix:///vol?socket=pool/nbd.sock'",
    "thinpool status",
    "thinpool list",
    "nbdcopy 'nbd+unix:///vol-snap?socket=pool/nbd.sock' backup.img",
    "thinpool delete vol-snap",
    "thinpool stop",
]


def readme_commands():
    """Command lines of the README's quick start shell blocks; None without such a section."""
    text = (ROOT / "README.md").read_text()
    m = re.search(r"^##+ *quick ?start.*?$(.*?)(?=^## )", text + "\n## end", re.M | re.S | re.I)
    if not m:
        return None
    lines = []
    for block in re.findall(r"```(?:sh|bash|console)?\n(.*?)```", m.group(1), re.S):
        for line in block.splitlines():
            line = re.sub(r"\s+#.*$", "", line.strip().removeprefix("$ ").strip())
            if line and not line.startswith("#"):
                lines.append(" ".join(line.split()))
    return lines


def test_readme_quick_start(pool_factory, tmp_path):
    for p in ("qemu-io", "nbdcopy"):
        program(p)
    env = dict(os.environ, PATH=f"{BIN_DIR}:{os.environ.get('PATH', '')}")
    # The daemon as the README starts it (default sizes: sparse files).
    assert shlex.split(QUICKSTART[0]) == ["thinpool", "run", "&"]   # the default dir: ./pool
    pool = pool_factory(data_size=None, metadata_size=None, name="pool")
    outputs = []
    for line in QUICKSTART[1:]:
        r = run("bash", "-c", line, cwd=tmp_path, env=env)
        outputs.append(r.stdout)
        if line.endswith(" stop"):
            assert pool.exit_status() == 0
    create, _, snapshot, _, status, listing, _, delete, stop = outputs
    assert create.startswith("created vol"), create
    assert "created snapshot vol-snap of vol" in snapshot, snapshot
    assert re.search(r"^mode\s+write$", status, re.M), status
    assert re.search(r"^vol-snap\s+1\s+1 GiB\s", listing, re.M), listing
    backup = tmp_path / "backup.img"
    assert backup.stat().st_size == 1 << 30
    with open(backup, "rb") as f:
        assert f.read(1 << 20) == b"\xab" * (1 << 20)     # the snapshot's data, not the later write
        assert f.read(1 << 20) == bytes(1 << 20)
    assert "deleted vol-snap" in delete, delete
    pool.check_metadata()
    pool.start()
    check_pattern(pool.uri("vol"), 0xcd, 0, 64 << 10)
    check_pattern(pool.uri("vol"), 0xab, 64 << 10, (1 << 20) - (64 << 10))

    readme = readme_commands()
    assert readme is not None, "README.md has no Quick start section"
    shown = [c for c in readme if c.split()[0] in ("thinpool", "qemu-io", "nbdcopy", "nbdinfo")]
    assert shown == [" ".join(c.split()) for c in QUICKSTART], (
        "README.md's quick start and features/test_quickstart.py's QUICKSTART differ: "
        f"README {shown}, test {QUICKSTART}")
