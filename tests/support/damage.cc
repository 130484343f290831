#include "tests/support/damage.h"

#include "persistent-data/btree/node.h"
#include "persistent-data/endian.h"
#include "persistent-data/space-maps/layout.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <filesystem>
#include <random>
#include <stdexcept>
#include <sys/stat.h>
#include <unistd.h>

namespace thinpool_test::damage {

using namespace pdata;
using pdata::btree::node_mut;
using pdata::btree::node_ref;

namespace {

constexpr std::size_t BS = MD_BLOCK_SIZE;
// Deeper than any valid tree gets; a walk going further is in a loop.
constexpr unsigned MAX_DEPTH = 40;

[[noreturn]] void fail(const std::string& what) { throw std::runtime_error("damage: " + what); }

std::string range_str(const key_range& r) {
    return "[" + std::to_string(r.begin) + ", " + (r.end ? std::to_string(*r.end) + ")" : std::string("-]"));
}

// Superblock offsets (thin/metadata/superblock.h).
constexpr std::size_t SB_METADATA_SNAP = 56;
constexpr std::size_t SB_DATA_SM_ROOT = 64;
constexpr std::size_t SB_METADATA_SM_ROOT = 192;
constexpr std::size_t SB_DATA_MAPPING_ROOT = 320;
constexpr std::size_t SB_DETAILS_ROOT = 328;
constexpr std::size_t SB_DATA_BLOCK_SIZE = 336;

} // namespace

const char* to_string(tree_kind t) {
    switch (t) {
    case tree_kind::details: return "details tree";
    case tree_kind::mapping_top: return "level-1 mapping tree";
    case tree_kind::mapping_bottom: return "level-2 mapping tree";
    case tree_kind::metadata_overflow: return "metadata space map overflow tree";
    case tree_kind::data_index: return "data space map index tree";
    case tree_kind::data_overflow: return "data space map overflow tree";
    }
    return "?";
}

const char* to_string(header_damage h) {
    switch (h) {
    case header_damage::flags: return "flags";
    case header_damage::nr_entries: return "nr_entries";
    case header_damage::value_size: return "value_size";
    case header_damage::max_entries: return "max_entries";
    }
    return "?";
}

const char* to_string(sb_field f) {
    switch (f) {
    case sb_field::data_mapping_root: return "data_mapping_root";
    case sb_field::device_details_root: return "device_details_root";
    case sb_field::metadata_snap: return "metadata_snap";
    case sb_field::metadata_sm_bitmap_root: return "metadata sm bitmap_root";
    case sb_field::metadata_sm_ref_count_root: return "metadata sm ref_count_root";
    case sb_field::data_sm_bitmap_root: return "data sm bitmap_root";
    case sb_field::data_sm_ref_count_root: return "data sm ref_count_root";
    case sb_field::metadata_sm_nr_blocks: return "metadata sm nr_blocks";
    case sb_field::data_sm_nr_blocks: return "data sm nr_blocks";
    case sb_field::data_block_size: return "data_block_size";
    }
    return "?";
}

// ---------------------------------------------------------------------------------------------
// image

image::image(const std::string& path) : path_(path) {
    fd_ = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
    if (fd_ < 0) fail(path + ": " + std::strerror(errno));
}

image::~image() {
    if (fd_ >= 0) ::close(fd_);
}

block_address image::nr_blocks() const {
    struct stat st;
    if (::fstat(fd_, &st) != 0) fail(path_ + ": fstat: " + std::strerror(errno));
    return static_cast<block_address>(st.st_size) / BS;
}

std::vector<std::uint8_t> image::read(block_address b) const {
    std::vector<std::uint8_t> buf(BS, 0);
    std::size_t done = 0;
    while (done < BS) {
        ssize_t n = ::pread(fd_, buf.data() + done, BS - done, static_cast<off_t>(b * BS + done));
        if (n < 0) {
            if (errno == EINTR) continue;
            fail(path_ + ": read of block " + std::to_string(b) + ": " + std::strerror(errno));
        }
        if (n == 0) break;  // beyond the end: zeros
        done += static_cast<std::size_t>(n);
    }
    return buf;
}

void image::write(block_address b, const std::vector<std::uint8_t>& block) {
    if (block.size() != BS) fail("write of a block that is not 4096 bytes");
    std::size_t done = 0;
    while (done < BS) {
        ssize_t n = ::pwrite(fd_, block.data() + done, BS - done, static_cast<off_t>(b * BS + done));
        if (n < 0) {
            if (errno == EINTR) continue;
            fail(path_ + ": write of block " + std::to_string(b) + ": " + std::strerror(errno));
        }
        done += static_cast<std::size_t>(n);
    }
}

void image::restamp(block_address b, block_salt salt) {
    auto d = read(b);
    store_le32(d.data(), block_checksum(d.data(), salt));
    write(b, d);
}

// ---------------------------------------------------------------------------------------------
// layout

const node_info* layout::node(block_address b) const {
    auto it = nodes.find(b);
    return it == nodes.end() ? nullptr : &it->second;
}

std::optional<block_salt> layout::salt_of(block_address b) const {
    if (b == 0 || (sb.metadata_snap && b == sb.metadata_snap)) return block_salt::superblock;
    if (nodes.count(b)) return block_salt::btree_node;
    if (b == metadata_index) return block_salt::index;
    if (std::find(metadata_bitmaps.begin(), metadata_bitmaps.end(), b) != metadata_bitmaps.end() ||
        std::find(data_bitmaps.begin(), data_bitmaps.end(), b) != data_bitmaps.end())
        return block_salt::bitmap;
    return std::nullopt;
}

std::vector<const node_info*> layout::nodes_of(tree_kind t, std::optional<bool> leaf) const {
    std::vector<const node_info*> out;
    for (auto& [b, n] : nodes)
        if (n.tree == t && (!leaf || n.leaf == *leaf)) out.push_back(&n);
    return out;
}

namespace {

class layout_reader {
public:
    layout_reader(image& img, layout& l) : img_(img), l_(l) {}

    void read_all() {
        auto sbd = img_.read(0);
        if (load_le32(sbd.data()) != block_checksum(sbd.data(), block_salt::superblock)) fail("bad superblock checksum");
        l_.sb = thin::superblock::unpack(sbd.data());
        if (l_.sb.metadata_snap) {
            auto sd = img_.read(l_.sb.metadata_snap);
            if (load_le32(sd.data()) != block_checksum(sd.data(), block_salt::superblock))
                fail("bad metadata snapshot superblock checksum");
            l_.snap = thin::superblock::unpack(sd.data());
        }
        sm_root msm = l_.sb.metadata_sm(), dsm = l_.sb.data_sm();
        l_.nr_metadata_blocks = msm.nr_blocks;
        l_.nr_data_blocks = dsm.nr_blocks;

        auto walk_sb = [&](const thin::superblock& s, block_address at, bool snap) {
            visit(tree_kind::details, s.device_details_root, 0, {0, std::nullopt}, std::nullopt, {at, SB_DETAILS_ROOT},
                  std::nullopt, snap);
            visit(tree_kind::mapping_top, s.data_mapping_root, 0, {0, std::nullopt}, std::nullopt,
                  {at, SB_DATA_MAPPING_ROOT}, std::nullopt, snap);
        };
        walk_sb(l_.sb, 0, false);
        if (l_.snap) walk_sb(*l_.snap, l_.sb.metadata_snap, true);

        // Space maps: the overflow trees first (their values complete the bitmaps' 3s).
        visit(tree_kind::metadata_overflow, msm.ref_count_root, 0, {0, std::nullopt}, std::nullopt,
              {0, SB_METADATA_SM_ROOT + 24}, std::nullopt, false);
        visit(tree_kind::data_overflow, dsm.ref_count_root, 0, {0, std::nullopt}, std::nullopt,
              {0, SB_DATA_SM_ROOT + 24}, std::nullopt, false);
        visit(tree_kind::data_index, dsm.bitmap_root, 0, {0, std::nullopt}, std::nullopt, {0, SB_DATA_SM_ROOT + 16},
              std::nullopt, false);

        l_.metadata_index = msm.bitmap_root;
        auto idx = img_.read(msm.bitmap_root);
        if (load_le32(idx.data()) != block_checksum(idx.data(), block_salt::index)) fail("bad metadata index checksum");
        std::uint64_t nr_mbitmaps = (msm.nr_blocks + ENTRIES_PER_BITMAP - 1) / ENTRIES_PER_BITMAP;
        for (std::uint64_t i = 0; i < nr_mbitmaps; ++i)
            l_.metadata_bitmaps.push_back(
                sm::index_entry::unpack(idx.data() + sm::INDEX_BLOCK_HEADER_SIZE + i * sm::INDEX_ENTRY_SIZE).blocknr);
        std::uint64_t nr_dbitmaps = (dsm.nr_blocks + ENTRIES_PER_BITMAP - 1) / ENTRIES_PER_BITMAP;
        l_.data_bitmaps.resize(nr_dbitmaps);
        for (std::uint64_t i = 0; i < nr_dbitmaps; ++i) {
            auto it = data_index_.find(i);
            if (it == data_index_.end()) fail("data space map index has no bitmap " + std::to_string(i));
            l_.data_bitmaps[i] = it->second;
        }
        read_counts(l_.metadata_bitmaps, msm.nr_blocks, metadata_overflow_, l_.metadata_counts);
        read_counts(l_.data_bitmaps, dsm.nr_blocks, data_overflow_, l_.data_counts);
    }

private:
    void read_counts(const std::vector<block_address>& bitmaps, std::uint64_t nr_blocks,
                     const std::map<std::uint64_t, std::uint32_t>& overflow, std::vector<std::uint32_t>& out) {
        out.assign(nr_blocks, 0);
        for (std::size_t i = 0; i < bitmaps.size(); ++i) {
            auto d = img_.read(bitmaps[i]);
            if (load_le32(d.data()) != block_checksum(d.data(), block_salt::bitmap))
                fail("bad checksum in bitmap block " + std::to_string(bitmaps[i]));
            for (unsigned w = 0; w < sm::WORDS_PER_BITMAP; ++w) {
                std::uint64_t word = load_le64(d.data() + sm::BITMAP_HEADER_SIZE + 8 * w);
                for (unsigned k = 0; k < sm::ENTRIES_PER_WORD; ++k) {
                    std::uint64_t b = i * ENTRIES_PER_BITMAP + w * sm::ENTRIES_PER_WORD + k;
                    if (b >= nr_blocks) break;
                    unsigned v = sm::entry_get(word, k);
                    if (v == 3) {
                        auto it = overflow.find(b);
                        if (it == overflow.end()) fail("count of block " + std::to_string(b) + " missing from the overflow tree");
                        out[b] = it->second;
                    } else {
                        out[b] = v;
                    }
                }
            }
        }
    }

    // Visits node b (reached from referrer `ref`, with the given key range), then its children.
    // A node is descended into once per (tree context): per device and view for level-2 trees, once
    // per view otherwise, so shared subtrees get every owner without exponential walks.
    unsigned visit(tree_kind t, block_address b, unsigned depth, key_range range, std::optional<block_address> parent,
                   std::pair<block_address, unsigned> ref, std::optional<dev_id> dev, bool snap) {
        if (depth > MAX_DEPTH) fail("tree too deep (a loop?) at block " + std::to_string(b));
        if (b >= img_.nr_blocks()) fail("reference to block " + std::to_string(b) + " beyond the end");
        auto d = img_.read(b);
        node_ref n(d.data());
        if (load_le32(d.data()) != block_checksum(d.data(), block_salt::btree_node) || n.blocknr() != b ||
            (!n.is_leaf() && !n.is_internal()) || n.nr_entries() > n.max_entries())
            fail("block " + std::to_string(b) + " is not a valid btree node");
        auto [it, inserted] = l_.nodes.try_emplace(b);
        node_info& ni = it->second;
        if (inserted) {
            ni.block = b;
            ni.tree = t;
            ni.leaf = n.is_leaf();
            ni.depth = depth;
            ni.nr_entries = n.nr_entries();
            ni.max_entries = n.max_entries();
            ni.value_size = n.value_size();
            if (ni.nr_entries) {
                ni.first_key = n.key(0);
                ni.last_key = n.key(ni.nr_entries - 1);
            }
            ni.range = range;
            ni.parent = parent;
            ni.slot = ref.second;
        } else if (ni.tree != t) {
            fail("block " + std::to_string(b) + " is in two kinds of tree");
        }
        ni.referrers.insert(ref);
        (snap ? ni.snapshot : ni.live) = true;
        if (dev) ni.owners.insert(owner{*dev, range, snap});

        auto ctx = std::make_tuple(b, dev.value_or(~dev_id(0)), snap, range.begin, range.end.value_or(~0ull));
        if (!descended_.insert(ctx).second) return ni.height;

        unsigned nr = n.nr_entries();
        if (n.is_internal()) {
            unsigned h = 0;
            std::vector<std::pair<std::uint64_t, block_address>> children;
            for (unsigned i = 0; i < nr; ++i) children.push_back({n.key(i), n.value64(i)});
            for (unsigned i = 0; i < nr; ++i) {
                key_range cr{children[i].first, i + 1 < nr ? std::optional<std::uint64_t>(children[i + 1].first) : range.end};
                h = visit(t, children[i].second, depth + 1, cr, b, {b, i}, dev, snap);
            }
            l_.nodes[b].height = h + 1;
            return h + 1;
        }
        switch (t) {
        case tree_kind::details:
            for (unsigned i = 0; i < nr; ++i)
                (snap ? l_.snap_details : l_.details)[n.key(i)] = thin::device_details::unpack(n.value(i));
            break;
        case tree_kind::mapping_top: {
            std::vector<std::pair<dev_id, block_address>> roots;
            for (unsigned i = 0; i < nr; ++i) roots.push_back({n.key(i), n.value64(i)});
            for (unsigned i = 0; i < nr; ++i) {
                (snap ? l_.snap_roots : l_.roots)[roots[i].first] = roots[i].second;
                visit(tree_kind::mapping_bottom, roots[i].second, 0, {0, std::nullopt}, b, {b, i}, roots[i].first, snap);
            }
            break;
        }
        case tree_kind::metadata_overflow:
        case tree_kind::data_overflow: {
            auto& m = t == tree_kind::metadata_overflow ? metadata_overflow_ : data_overflow_;
            for (unsigned i = 0; i < nr; ++i) m[n.key(i)] = load_le32(n.value(i));
            break;
        }
        case tree_kind::data_index:
            for (unsigned i = 0; i < nr; ++i) data_index_[n.key(i)] = sm::index_entry::unpack(n.value(i)).blocknr;
            break;
        case tree_kind::mapping_bottom:
            break;
        }
        return 0;
    }

    image& img_;
    layout& l_;
    std::set<std::tuple<block_address, dev_id, bool, std::uint64_t, std::uint64_t>> descended_;
    std::map<std::uint64_t, std::uint32_t> metadata_overflow_, data_overflow_;
    std::map<std::uint64_t, block_address> data_index_;
};

} // namespace

layout read_layout(const std::string& path) {
    image img(path);
    layout l;
    layout_reader(img, l).read_all();
    return l;
}

// ---------------------------------------------------------------------------------------------
// damage

namespace {

const node_info& need_node(const layout& l, block_address b) {
    const node_info* n = l.node(b);
    if (!n) fail("block " + std::to_string(b) + " is not a btree node of the metadata");
    return *n;
}

std::string describe(const layout& l, block_address b) {
    if (b == 0) return "superblock";
    if (l.sb.metadata_snap && b == l.sb.metadata_snap) return "metadata snapshot superblock (block " + std::to_string(b) + ")";
    if (const node_info* n = l.node(b)) {
        std::string s = std::string(to_string(n->tree)) + (n->leaf ? " leaf " : " internal node ") + std::to_string(b) +
                        " (depth " + std::to_string(n->depth) + ", keys " + range_str(n->range);
        if (!n->owners.empty()) {
            s += ", devices";
            std::set<std::string> devs;
            for (auto& o : n->owners) devs.insert((o.snapshot ? "snap:" : "") + std::to_string(o.dev));
            for (auto& d : devs) s += " " + d;
        }
        return s + ")";
    }
    if (b == l.metadata_index) return "metadata space map index block " + std::to_string(b);
    for (std::size_t i = 0; i < l.metadata_bitmaps.size(); ++i)
        if (l.metadata_bitmaps[i] == b) return "metadata bitmap " + std::to_string(i) + " (block " + std::to_string(b) + ")";
    for (std::size_t i = 0; i < l.data_bitmaps.size(); ++i)
        if (l.data_bitmaps[i] == b) return "data bitmap " + std::to_string(i) + " (block " + std::to_string(b) + ")";
    return "block " + std::to_string(b);
}

// The keys lost when node b (with the given range per appearance) cannot be used.
std::vector<lost_keys> lost_of(const layout& l, block_address b) {
    std::vector<lost_keys> out;
    const node_info* n = l.node(b);
    if (!n) return out;
    if (n->tree == tree_kind::mapping_bottom) {
        for (auto& o : n->owners) out.push_back({n->tree, o.dev, o.range, o.snapshot});
    } else {
        if (n->live) out.push_back({n->tree, 0, n->range, false});
        if (n->snapshot) out.push_back({n->tree, 0, n->range, true});
    }
    return out;
}

block_salt need_salt(const layout& l, block_address b) {
    auto s = l.salt_of(b);
    if (!s) fail("block " + std::to_string(b) + " is not a metadata block of a known kind");
    return *s;
}

void stamp(std::vector<std::uint8_t>& d, block_salt salt) { store_le32(d.data(), block_checksum(d.data(), salt)); }

} // namespace

applied bad_checksum(image& img, const layout& l, block_address b) {
    auto d = img.read(b);
    d[0] ^= 0x5a;
    d[2] ^= 0x01;
    img.write(b, d);
    return {"bad checksum in " + describe(l, b), b, lost_of(l, b)};
}

applied wrong_blocknr(image& img, const layout& l, block_address b) {
    block_salt salt = need_salt(l, b);
    auto d = img.read(b);
    store_le64(d.data() + 8, b + 7919);
    stamp(d, salt);
    img.write(b, d);
    return {"wrong blocknr in " + describe(l, b), b, lost_of(l, b)};
}

applied bad_node_header(image& img, const layout& l, block_address b, header_damage h) {
    need_node(l, b);
    auto d = img.read(b);
    node_mut n(d.data());
    switch (h) {
    case header_damage::flags: n.set_flags(0); break;
    case header_damage::nr_entries: n.set_nr_entries(n.max_entries() + 1); break;
    case header_damage::value_size: store_le32(d.data() + 24, n.value_size() == 4 ? 2 : 4); break;
    case header_damage::max_entries: store_le32(d.data() + 20, 1000); break;
    }
    stamp(d, block_salt::btree_node);
    img.write(b, d);
    return {std::string("bad ") + to_string(h) + " in the header of " + describe(l, b), b, lost_of(l, b)};
}

applied keys_out_of_order(image& img, const layout& l, block_address b) {
    const node_info& ni = need_node(l, b);
    if (ni.nr_entries < 2) fail("keys_out_of_order needs a node of 2 entries");
    auto d = img.read(b);
    node_mut n(d.data());
    unsigned i = ni.nr_entries / 2;
    std::uint64_t a = n.key(i - 1), c = n.key(i);
    n.set_key(i - 1, c);
    n.set_key(i, a);
    stamp(d, block_salt::btree_node);
    img.write(b, d);
    return {"keys " + std::to_string(i - 1) + " and " + std::to_string(i) + " swapped in " + describe(l, b), b,
            lost_of(l, b)};
}

applied child_key_beyond_parent(image& img, const layout& l, block_address b) {
    const node_info& ni = need_node(l, b);
    if (!ni.range.end || ni.nr_entries == 0) fail("child_key_beyond_parent needs a non-empty node that is not last");
    std::uint64_t k = *ni.range.end;
    auto d = img.read(b);
    node_mut n(d.data());
    n.set_key(ni.nr_entries - 1, k);
    stamp(d, block_salt::btree_node);
    img.write(b, d);
    applied a{"last key of " + describe(l, b) + " raised to the next parent key " + std::to_string(k), b, {}};
    for (auto& lk : lost_of(l, b))
        if (lk.range.end && *lk.range.end <= k) a.lost.push_back(lk);
    return a;
}

applied parent_key_above_child(image& img, const layout& l, block_address b) {
    const node_info& ni = need_node(l, b);
    if (!ni.parent || ni.nr_entries < 2 || ni.referrers.size() != 1)
        fail("parent_key_above_child needs an unshared non-root node of 2 entries");
    std::uint64_t k = ni.first_key + 1;
    auto d = img.read(*ni.parent);
    node_mut p(d.data());
    if (p.key(ni.slot) != ni.range.begin || p.value64(ni.slot) != b) fail("parent slot does not match");
    p.set_key(ni.slot, k);
    stamp(d, block_salt::btree_node);
    img.write(*ni.parent, d);
    applied a{"parent " + std::to_string(*ni.parent) + " key for " + describe(l, b) + " raised to " + std::to_string(k), b,
              lost_of(l, b)};
    for (auto& lk : a.lost) lk.range.begin = k;
    return a;
}

applied duplicate_child(image& img, const layout& l, block_address internal, unsigned slot) {
    const node_info& pi = need_node(l, internal);
    if (pi.leaf || slot + 1 >= pi.nr_entries) fail("duplicate_child needs an internal node with a slot after `slot`");
    auto d = img.read(internal);
    node_mut p(d.data());
    block_address child = p.value64(slot);
    std::uint64_t lo = p.key(slot + 1);
    std::optional<std::uint64_t> hi;
    if (slot + 2 < pi.nr_entries) hi = p.key(slot + 2);
    p.set_value64(slot + 1, child);
    stamp(d, block_salt::btree_node);
    img.write(internal, d);
    applied a{"slot " + std::to_string(slot + 1) + " of " + describe(l, internal) + " points at the child of slot " +
                  std::to_string(slot) + " (block " + std::to_string(child) + ")",
              child, {}};
    for (auto lk : lost_of(l, internal)) {
        lk.range.begin = lo;
        if (hi) lk.range.end = hi;
        a.lost.push_back(lk);
    }
    return a;
}

applied self_loop(image& img, const layout& l, block_address internal) {
    const node_info& pi = need_node(l, internal);
    if (pi.leaf) fail("self_loop needs an internal node");
    auto d = img.read(internal);
    node_mut p(d.data());
    p.set_nr_entries(1);
    p.set_key(0, pi.range.begin);
    p.set_value64(0, internal);
    stamp(d, block_salt::btree_node);
    img.write(internal, d);
    return {describe(l, internal) + " made its own only child", internal, lost_of(l, internal)};
}

applied graft(image& img, const layout& l, block_address node, unsigned slot, block_address target) {
    const node_info& pi = need_node(l, node);
    bool top_leaf = pi.leaf && pi.tree == tree_kind::mapping_top;
    if ((pi.leaf && !top_leaf) || slot >= pi.nr_entries) fail("graft needs an internal node or a level-1 leaf and a slot");
    auto d = img.read(node);
    node_mut p(d.data());
    std::uint64_t k = p.key(slot);
    std::optional<std::uint64_t> hi;
    if (slot + 1 < pi.nr_entries) hi = p.key(slot + 1);
    p.set_value64(slot, target);
    stamp(d, block_salt::btree_node);
    img.write(node, d);
    applied a{"slot " + std::to_string(slot) + " of " + describe(l, node) + " points at " + describe(l, target), target, {}};
    if (top_leaf) {
        if (pi.live) a.lost.push_back({tree_kind::mapping_bottom, k, {0, std::nullopt}, false});
        if (pi.snapshot) a.lost.push_back({tree_kind::mapping_bottom, k, {0, std::nullopt}, true});
    } else {
        for (auto lk : lost_of(l, node)) {
            lk.range.begin = k;
            if (hi) lk.range.end = hi;
            a.lost.push_back(lk);
        }
    }
    return a;
}

namespace {
// Moves `count` entries (keys and values) of src starting at src_i into dst at dst_i, where dst
// has room; both nodes' nr_entries are updated.
void move_entries(node_mut dst, unsigned dst_i, node_mut src, unsigned src_i, unsigned count) {
    unsigned dn = dst.nr_entries(), sn = src.nr_entries();
    std::size_t vs = dst.value_size();
    // Open a gap in dst.
    std::memmove(dst.raw() + btree::NODE_HEADER_SIZE + 8 * (dst_i + count), dst.raw() + btree::NODE_HEADER_SIZE + 8 * dst_i,
                 8 * (dn - dst_i));
    std::memmove(dst.value(dst_i + count), dst.value(dst_i), vs * (dn - dst_i));
    for (unsigned i = 0; i < count; ++i) {
        dst.set_key(dst_i + i, src.key(src_i + i));
        std::memcpy(dst.value(dst_i + i), src.value(src_i + i), vs);
    }
    dst.set_nr_entries(dn + count);
    // Close the hole in src.
    std::memmove(src.raw() + btree::NODE_HEADER_SIZE + 8 * src_i, src.raw() + btree::NODE_HEADER_SIZE + 8 * (src_i + count),
                 8 * (sn - src_i - count));
    std::memmove(src.value(src_i), src.value(src_i + count), vs * (sn - src_i - count));
    src.set_nr_entries(sn - count);
}
} // namespace

applied make_under_full(image& img, const layout& l, block_address b) {
    const node_info& ni = need_node(l, b);
    if (!ni.parent || ni.referrers.size() != 1) fail("make_under_full needs an unshared non-root node");
    const node_info& pi = need_node(l, *ni.parent);
    if (pi.referrers.size() != 1) fail("make_under_full needs an unshared parent");
    unsigned target = ni.max_entries / 3 - 1;
    if (ni.nr_entries <= target) fail("node is already under-full");
    unsigned m = ni.nr_entries - target;
    auto pd = img.read(*ni.parent);
    node_mut p(pd.data());
    auto xd = img.read(b);
    node_mut x(xd.data());
    auto try_sibling = [&](unsigned s) -> const node_info* {
        const node_info* si = l.node(p.value64(s));
        if (!si || si->referrers.size() != 1 || si->leaf != ni.leaf || si->nr_entries + m > si->max_entries) return nullptr;
        return si;
    };
    if (ni.slot > 0 && try_sibling(ni.slot - 1)) {
        block_address sb = p.value64(ni.slot - 1);
        auto sd = img.read(sb);
        node_mut s(sd.data());
        move_entries(s, s.nr_entries(), x, 0, m);
        p.set_key(ni.slot, x.key(0));
        stamp(sd, block_salt::btree_node);
        img.write(sb, sd);
    } else if (ni.slot + 1 < pi.nr_entries && try_sibling(ni.slot + 1)) {
        block_address sb = p.value64(ni.slot + 1);
        auto sd = img.read(sb);
        node_mut s(sd.data());
        move_entries(s, 0, x, target, m);
        p.set_key(ni.slot + 1, s.key(0));
        stamp(sd, block_salt::btree_node);
        img.write(sb, sd);
    } else {
        fail("no unshared sibling of block " + std::to_string(b) + " has room for " + std::to_string(m) + " entries");
    }
    stamp(xd, block_salt::btree_node);
    img.write(b, xd);
    stamp(pd, block_salt::btree_node);
    img.write(*ni.parent, pd);
    return {describe(l, b) + " left with " + std::to_string(target) + " entries (entries moved to a sibling)", b, {}};
}

applied max_entries_not_multiple_of_3(image& img, const layout& l, block_address b) {
    const node_info& ni = need_node(l, b);
    std::uint32_t new_max = ni.max_entries - 2;
    if (ni.nr_entries > new_max || new_max % 3 == 0) fail("cannot shrink max_entries of block " + std::to_string(b));
    auto d = img.read(b);
    std::vector<std::uint8_t> values(std::size_t(ni.value_size) * new_max);
    std::memcpy(values.data(), d.data() + btree::NODE_HEADER_SIZE + 8 * std::size_t(ni.max_entries), values.size());
    std::memset(d.data() + btree::NODE_HEADER_SIZE + 8 * std::size_t(new_max), 0,
                BS - btree::NODE_HEADER_SIZE - 8 * std::size_t(new_max));
    std::memcpy(d.data() + btree::NODE_HEADER_SIZE + 8 * std::size_t(new_max), values.data(), values.size());
    store_le32(d.data() + 20, new_max);
    stamp(d, block_salt::btree_node);
    img.write(b, d);
    return {describe(l, b) + " rewritten with max_entries " + std::to_string(new_max), b, {}};
}

applied set_leaf_entry(image& img, const layout& l, block_address leaf, unsigned slot, std::optional<std::uint64_t> key,
                       std::optional<std::uint64_t> value) {
    const node_info& ni = need_node(l, leaf);
    if (!ni.leaf || slot >= ni.nr_entries || (value && ni.value_size != 8)) fail("set_leaf_entry: bad leaf or slot");
    auto d = img.read(leaf);
    node_mut n(d.data());
    std::string what = "entry " + std::to_string(slot) + " of " + describe(l, leaf) + ":";
    if (key) {
        what += " key " + std::to_string(n.key(slot)) + " -> " + std::to_string(*key);
        n.set_key(slot, *key);
    }
    if (value) {
        what += " value " + std::to_string(n.value64(slot)) + " -> " + std::to_string(*value);
        n.set_value64(slot, *value);
    }
    stamp(d, block_salt::btree_node);
    img.write(leaf, d);
    return {what, leaf, {}};
}

namespace {
// The leaf of a one-level tree holding key k, and the slot.
std::pair<block_address, unsigned> leaf_slot(image& img, const layout& l, tree_kind t, std::uint64_t k, bool live) {
    for (auto* n : l.nodes_of(t, true)) {
        if (live ? !n->live : !n->snapshot) continue;
        auto data = img.read(n->block);
        node_ref r(data.data());
        int i = r.find(k);
        if (i >= 0) return {n->block, unsigned(i)};
    }
    fail("key " + std::to_string(k) + " not in the " + to_string(t));
}
} // namespace

applied set_details(image& img, const layout& l, dev_id dev, const thin::device_details& det) {
    auto [leaf, slot] = leaf_slot(img, l, tree_kind::details, dev, true);
    auto d = img.read(leaf);
    node_mut n(d.data());
    det.pack(n.value(slot));
    stamp(d, block_salt::btree_node);
    img.write(leaf, d);
    return {"details of device " + std::to_string(dev) + " rewritten (mapped_blocks " + std::to_string(det.mapped_blocks) +
                ")",
            leaf, {}};
}

applied renumber_device(image& img, const layout& l, dev_id from, dev_id to) {
    for (tree_kind t : {tree_kind::details, tree_kind::mapping_top}) {
        auto [leaf, slot] = leaf_slot(img, l, t, from, true);
        auto d = img.read(leaf);
        node_mut n(d.data());
        if ((slot > 0 && n.key(slot - 1) >= to) || (slot + 1 < n.nr_entries() && n.key(slot + 1) <= to))
            fail("renumber_device would break the key order");
        n.set_key(slot, to);
        stamp(d, block_salt::btree_node);
        img.write(leaf, d);
    }
    return {"device " + std::to_string(from) + " renumbered " + std::to_string(to) + " in both trees", 0, {}};
}

namespace {
// The level-1 leaf holding device d (live trees first).
std::pair<block_address, unsigned> top_slot(image& img, const layout& l, dev_id d) {
    for (auto* n : l.nodes_of(tree_kind::mapping_top, true)) {
        auto data = img.read(n->block);
        node_ref r(data.data());
        int i = r.find(d);
        if (i >= 0) return {n->block, unsigned(i)};
    }
    fail("device " + std::to_string(d) + " not in the level-1 tree");
}
} // namespace

applied alias_device(image& img, const layout& l, dev_id a, dev_id b) {
    auto [leaf, slot] = top_slot(img, l, a);
    applied r = graft(img, l, leaf, slot, l.roots.at(b));
    r.what = "device " + std::to_string(a) + "'s mapping tree replaced by device " + std::to_string(b) + "'s (" +
             std::to_string(l.roots.at(b)) + "), counts unchanged";
    r.block = leaf;
    r.lost.clear();
    return r;
}

applied set_device_root(image& img, const layout& l, dev_id d, block_address root) {
    auto [leaf, slot] = top_slot(img, l, d);
    applied r = graft(img, l, leaf, slot, root);
    r.what = "device " + std::to_string(d) + "'s mapping root set to " + describe(l, root);
    return r;
}

namespace {
applied adjust_count(image& img, const layout& l, bool metadata, std::uint64_t b, int delta) {
    const auto& counts = metadata ? l.metadata_counts : l.data_counts;
    const auto& bitmaps = metadata ? l.metadata_bitmaps : l.data_bitmaps;
    const char* kind = metadata ? "metadata" : "data";
    if (b >= counts.size()) fail(std::string(kind) + " block " + std::to_string(b) + " beyond the space map");
    std::int64_t now = counts[b], want = now + delta;
    std::string what = std::string(kind) + " count of block " + std::to_string(b) + " changed from " +
                       std::to_string(now) + " to " + std::to_string(want);
    if (now < 3) {
        if (want < 0 || want > 2) fail("cannot set a bitmap count to " + std::to_string(want));
        block_address bm = bitmaps[b / ENTRIES_PER_BITMAP];
        std::uint64_t e = b % ENTRIES_PER_BITMAP;
        auto d = img.read(bm);
        std::uint8_t* w = d.data() + sm::BITMAP_HEADER_SIZE + 8 * (e / sm::ENTRIES_PER_WORD);
        store_le64(w, sm::entry_set(load_le64(w), unsigned(e % sm::ENTRIES_PER_WORD), unsigned(want)));
        stamp(d, block_salt::bitmap);
        img.write(bm, d);
        return {what + " (bitmap block " + std::to_string(bm) + ")", b, {}};
    }
    if (want < 3) fail("cannot move a count out of the overflow tree");
    for (auto* n : l.nodes_of(metadata ? tree_kind::metadata_overflow : tree_kind::data_overflow, true)) {
        auto d = img.read(n->block);
        node_mut r(d.data());
        int i = r.find(b);
        if (i < 0) continue;
        store_le32(r.value(unsigned(i)), std::uint32_t(want));
        stamp(d, block_salt::btree_node);
        img.write(n->block, d);
        return {what + " (overflow leaf " + std::to_string(n->block) + ")", b, {}};
    }
    fail("block " + std::to_string(b) + " not in the overflow tree");
}
} // namespace

applied adjust_metadata_count(image& img, const layout& l, block_address b, int delta) {
    return adjust_count(img, l, true, b, delta);
}

applied adjust_data_count(image& img, const layout& l, std::uint64_t b, int delta) {
    return adjust_count(img, l, false, b, delta);
}

applied set_superblock_field(image& img, const layout& l, sb_field f, std::uint64_t value) {
    std::size_t off = 0;
    applied a;
    a.block = value;
    switch (f) {
    case sb_field::data_mapping_root:
        off = SB_DATA_MAPPING_ROOT;
        a.lost.push_back({tree_kind::mapping_top, 0, {0, std::nullopt}, false});
        break;
    case sb_field::device_details_root:
        off = SB_DETAILS_ROOT;
        a.lost.push_back({tree_kind::details, 0, {0, std::nullopt}, false});
        break;
    case sb_field::metadata_snap: off = SB_METADATA_SNAP; break;
    case sb_field::metadata_sm_nr_blocks: off = SB_METADATA_SM_ROOT; a.block = 0; break;
    case sb_field::metadata_sm_bitmap_root: off = SB_METADATA_SM_ROOT + 16; break;
    case sb_field::metadata_sm_ref_count_root: off = SB_METADATA_SM_ROOT + 24; break;
    case sb_field::data_sm_nr_blocks: off = SB_DATA_SM_ROOT; a.block = 0; break;
    case sb_field::data_sm_bitmap_root: off = SB_DATA_SM_ROOT + 16; break;
    case sb_field::data_sm_ref_count_root: off = SB_DATA_SM_ROOT + 24; break;
    case sb_field::data_block_size: off = SB_DATA_BLOCK_SIZE; a.block = 0; break;
    }
    auto d = img.read(0);
    std::uint64_t old;
    if (f == sb_field::data_block_size) {
        old = load_le32(d.data() + off);
        store_le32(d.data() + off, static_cast<std::uint32_t>(value));
    } else {
        old = load_le64(d.data() + off);
        store_le64(d.data() + off, value);
    }
    stamp(d, block_salt::superblock);
    img.write(0, d);
    a.what = std::string("superblock ") + to_string(f) + " changed from " + std::to_string(old) + " to " +
             std::to_string(value) + (l.salt_of(value) ? " (" + describe(l, value) + ")" : std::string());
    return a;
}

// ---------------------------------------------------------------------------------------------
// whole files

void truncate_file(const std::string& path, std::uint64_t bytes) { std::filesystem::resize_file(path, bytes); }

void write_zero_file(const std::string& path, std::uint64_t bytes) {
    int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) fail(path + ": " + std::strerror(errno));
    // Real zeros, not a hole: a reader must see zero bytes either way, but test both kinds of file.
    std::vector<char> zeros(1 << 16, 0);
    std::uint64_t done = 0;
    while (done < bytes) {
        std::size_t n = std::min<std::uint64_t>(zeros.size(), bytes - done);
        if (::write(fd, zeros.data(), n) != static_cast<ssize_t>(n)) {
            ::close(fd);
            fail(path + ": write failed");
        }
        done += n;
    }
    ::close(fd);
}

void write_random_file(const std::string& path, std::uint64_t bytes, std::uint64_t seed) {
    std::mt19937_64 rng(seed);
    std::string s(bytes, '\0');
    for (std::uint64_t i = 0; i < bytes; i += 8) {
        std::uint64_t v = rng();
        std::memcpy(s.data() + i, &v, std::min<std::uint64_t>(8, bytes - i));
    }
    int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) fail(path + ": " + std::strerror(errno));
    bool ok = ::write(fd, s.data(), s.size()) == static_cast<ssize_t>(s.size());
    ::close(fd);
    if (!ok) fail(path + ": write failed");
}

void sparse_copy(const std::string& from, const std::string& to) {
    int in = ::open(from.c_str(), O_RDONLY | O_CLOEXEC);
    if (in < 0) fail(from + ": " + std::strerror(errno));
    int out = ::open(to.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (out < 0) {
        ::close(in);
        fail(to + ": " + std::strerror(errno));
    }
    struct stat st;
    ::fstat(in, &st);
    off_t size = st.st_size;
    std::vector<char> buf(1 << 20);
    off_t pos = 0;
    bool ok = ::ftruncate(out, size) == 0;
    while (ok && pos < size) {
        off_t data = ::lseek(in, pos, SEEK_DATA);
        if (data < 0) break;  // only a hole is left
        off_t hole = ::lseek(in, data, SEEK_HOLE);
        if (hole < 0) hole = size;
        for (off_t p = data; ok && p < hole;) {
            std::size_t n = static_cast<std::size_t>(std::min<off_t>(static_cast<off_t>(buf.size()), hole - p));
            ssize_t r = ::pread(in, buf.data(), n, p);
            if (r <= 0) { ok = false; break; }
            ok = ::pwrite(out, buf.data(), static_cast<std::size_t>(r), p) == r;
            p += r;
        }
        pos = hole;
    }
    ::close(in);
    ::close(out);
    if (!ok) fail("copy of " + from + " to " + to + " failed");
}

} // namespace thinpool_test::damage
