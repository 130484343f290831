#!/usr/bin/env python3
"""Regenerates the seed corpora under tests/fuzz/corpus from the kernel fixtures.

usage: make_seeds.py FIXTURE_DIR TOOLS_DIR   (TOOLS_DIR holds thin_dump and thin_restore)

Metadata images become records of fuzz_blocks.h: a kind byte (which validator stamps the block in
the harness) and the 4096-byte block. The kind is guessed from the block's layout, not its
checksum: block 0 is the superblock, a node has flags 1 or 2 at offset 4, the metadata space map's
index block is named by the superblock, any other non-zero block is taken for a bitmap.
"""
import gzip, os, struct, subprocess, sys, tempfile

BLOCK = 4096
HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, 'corpus')


def kind_of(block, i, index_block):
    if not any(block):
        return 0
    if i == 0:
        return 1
    if i == index_block:
        return 4
    flags, = struct.unpack_from('<I', block, 4)
    return 2 if flags in (1, 2) else 3


def records(image, nblocks):
    index_block = struct.unpack_from('<Q', image, 192 + 16)[0] if len(image) >= BLOCK else -1
    out = bytearray()
    for i in range(min(nblocks, len(image) // BLOCK)):
        b = image[i * BLOCK:(i + 1) * BLOCK]
        out += bytes([kind_of(b, i, index_block)]) + b
    # Trailing all-zero records add nothing but length.
    while len(out) > 1 + BLOCK and not any(out[-(BLOCK + 1):]):
        del out[-(BLOCK + 1):]
    return bytes(out)


def put(target, name, data):
    d = os.path.join(CORPUS, target + '_fuzz')
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), 'wb') as f:
        f.write(data)


def shrink_xml(xml, per_device):
    """The first per_device mapping lines of every device (enough to fill a few leaves)."""
    out, n = [], 0
    for line in xml.splitlines(keepends=True):
        if '<device' in line:
            n = 0
        if 'mapping' in line:
            n += 1
            if n > per_device:
                continue
        out.append(line)
    return ''.join(out)


def restore(tools, xml, nblocks):
    with tempfile.TemporaryDirectory() as t:
        x, o = os.path.join(t, 'in.xml'), os.path.join(t, 'out.bin')
        open(x, 'w').write(xml)
        with open(o, 'wb') as f:
            f.truncate(nblocks * BLOCK)
        if subprocess.run([os.path.join(tools, 'thin_restore'), '-i', x, '-o', o]).returncode:
            return None
        return open(o, 'rb').read()


def metadata_seeds(fixtures, tools):
    for name in sorted(os.listdir(fixtures)):
        if not name.endswith('.bin.gz'):
            continue
        base = name[:-len('.bin.gz')]
        image = gzip.open(os.path.join(fixtures, name)).read()
        # The first blocks as they are (incomplete trees: damage to report).
        put('metadata', base + '.head', records(image, 64))
        with tempfile.NamedTemporaryFile() as t:
            t.write(image)
            t.flush()
            r = subprocess.run([os.path.join(tools, 'thin_dump'), t.name], capture_output=True, text=True)
        if r.returncode:
            continue
        xml = shrink_xml(r.stdout, 20)
        put('restore', base + '.xml', xml.encode())
        # The same pool restored small enough to fit the harness's 64 blocks whole.
        small = restore(tools, xml, 64)
        if small:
            put('metadata', base + '.whole', records(small, 64))
            for i in range(12):
                b = small[i * BLOCK:(i + 1) * BLOCK]
                k = kind_of(b, i, struct.unpack_from('<Q', small, 208)[0])
                if k:
                    put('block', '%s.%d' % (base, i), bytes([k | (i & 7) << 3]) + b)


def pack_seeds(fixtures):
    for name in sorted(os.listdir(fixtures)):
        if name.endswith('.pack'):
            put('unpack', name, open(os.path.join(fixtures, name), 'rb').read())


def option(opt, data=b''):
    return struct.pack('>QII', 0x49484156454f5054, opt, len(data)) + data


def string32(s):
    return struct.pack('>I', len(s)) + s


def request(typ, offset, length, flags=0, payload=b'', cookie=1):
    return struct.pack('>IHHQQI', 0x25609513, flags, typ, cookie, offset, length) + payload


def nbd_seeds():
    hello = struct.pack('>I', 3)  # FIXED_NEWSTYLE | NO_ZEROES
    go = option(7, string32(b'vol') + struct.pack('>HH', 1, 3))
    meta = option(10, string32(b'vol') + struct.pack('>I', 1) + string32(b'base:allocation'))
    io = (request(1, 0, 4096, payload=b'\x5a' * 4096) + request(0, 0, 4096, cookie=2) +
          request(3, 0, 0, cookie=3) + request(7, 0, 65536, cookie=4) +
          request(4, 65536, 65536, cookie=5) + request(6, 8192, 8192, flags=2, cookie=6) +
          request(0, 1 << 40, 512, cookie=7) + request(2, 0, 0, cookie=8))
    put('nbd', 'list_abort', hello + option(3) + option(6, string32(b'vol') + struct.pack('>H', 0)) + option(2))
    put('nbd', 'structured_go_io', hello + option(8) + meta + go + io)
    put('nbd', 'export_name_io', hello + option(1, b'vol') + io)
    put('nbd', 'list_meta', hello + option(8) + option(9, string32(b'vol') + struct.pack('>I', 0)) + option(2))
    put('nbd', 'broken_go', hello + option(7, string32(b'broken') + struct.pack('>H', 0)))


def control_seeds():
    lines = [b'list\n', b'create vol1 1G\n', b'snapshot vol1 snap%201\n', b'delete vol1\n',
             b'status --json\n', b'resize vol1 64K\n', b'events\n', b'2024-06-10T12:00:00Z\n',
             b'vol.name_1-x\n', b'1.5G\n', b'18446744073709551615\n']
    for i, line in enumerate(lines):
        put('control', 'line%d' % i, line)
    put('control', 'catalogue', b'# pool\nthinpool-catalogue 1\ntransaction 7\n'
        b'volume vm1 id=0 size=10737418240 created=2024-06-10T12:00:00Z\n'
        b'volume base id=1 size=1073741824 created=2024-06-10T12:01:00Z origin=/srv/images/base%20x.img\n')
    put('control', 'config', b'# settings\nmetadata = /dev/vg/meta\ndata = /dev/vg/data\nblock_size = 64K\n'
        b'low_water_mark = 16\nfeatures = skip_block_zeroing\nnbd_tcp = [::1]:10809\nread_only = yes\n')


def main():
    fixtures, tools = sys.argv[1], sys.argv[2]
    metadata_seeds(fixtures, tools)
    pack_seeds(fixtures)
    nbd_seeds()
    control_seeds()


if __name__ == '__main__':
    main()
