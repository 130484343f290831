#include "thin/repair/scan.h"

#include "thin/metadata/mapping.h"

#include "persistent-data/btree/node.h"
#include "persistent-data/checksum.h"
#include "persistent-data/endian.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>

namespace thin::repair {

using namespace pdata;

namespace {

constexpr unsigned BATCH = 256;  // blocks per read batch (1 MiB)
constexpr unsigned MAX_DEPTH = 40;

enum class kind : std::uint8_t { unknown, other, details, top, level2, in_progress };

struct node_rec {
    block_address loc;
    std::uint32_t nr;
    std::uint32_t value_size;
    bool leaf;
    bool maybe_top;          // vs-8 leaf whose keys and values could be a level-1 leaf's
    std::uint32_t ref_begin;  // children (internal) or values (maybe_top leaves) in refs
    std::uint32_t ref_count;
    kind k = kind::unknown;
};

class classifier {
public:
    explicit classifier(block_address nr_blocks) : nr_blocks_(nr_blocks) {}

    void add_block(block_address b, const std::uint8_t* p, scan_result& out) {
        std::uint32_t salt = load_le32(p) ^ block_checksum(p, static_cast<block_salt>(0));
        if (salt == static_cast<std::uint32_t>(block_salt::btree_node)) {
            add_node(b, p);
        } else if (salt == static_cast<std::uint32_t>(block_salt::superblock) && b != SUPERBLOCK_LOCATION) {
            if (load_le64(p + 8) == b && load_le64(p + 32) == SUPERBLOCK_MAGIC)
                out.superblock_copies.push_back({b, superblock::unpack(p)});
        }
    }

    void finish(scan_result& out) {
        out.btree_nodes = nodes_.size();
        for (std::size_t i = 0; i < nodes_.size(); ++i) kind_of(i, 0);

        std::vector<bool> referenced(nodes_.size(), false);
        for (const node_rec& n : nodes_) {
            if (n.leaf || (n.k != kind::details && n.k != kind::top)) continue;
            for (std::uint32_t j = 0; j < n.ref_count; ++j) {
                long c = find(refs_[n.ref_begin + j]);
                if (c >= 0 && nodes_[c].k == n.k) referenced[c] = true;
            }
        }
        for (std::size_t i = 0; i < nodes_.size(); ++i) {
            if (referenced[i]) continue;
            if (nodes_[i].k == kind::details) out.details_roots.push_back(nodes_[i].loc);
            if (nodes_[i].k == kind::top) out.mapping_roots.push_back(nodes_[i].loc);
        }
    }

private:
    void add_node(block_address b, const std::uint8_t* p) {
        try {
            btree::btree_node_validator().check(p, b);
        } catch (const corrupt_block&) {
            return;
        }
        btree::node_ref n(p);
        node_rec r{b, n.nr_entries(), n.value_size(), n.is_leaf(), false, 0, 0};
        if (n.is_internal()) {
            if (n.value_size() != 8) return;
            r.ref_begin = static_cast<std::uint32_t>(refs_.size());
            for (unsigned i = 0; i < r.nr; ++i) refs_.push_back(n.value64(i));
            r.ref_count = r.nr;
        } else if (n.value_size() == 8) {
            bool top = true;
            for (unsigned i = 0; i < r.nr && top; ++i)
                top = n.key(i) <= MAX_DEV_ID && n.value64(i) < nr_blocks_ && (i == 0 || n.key(i) > n.key(i - 1));
            if (top) {
                r.maybe_top = true;
                r.ref_begin = static_cast<std::uint32_t>(refs_.size());
                for (unsigned i = 0; i < r.nr; ++i) refs_.push_back(n.value64(i));
                r.ref_count = r.nr;
            }
        }
        nodes_.push_back(r);
    }

    // Index of the node at b, or -1. Nodes are added in block order.
    long find(block_address b) const {
        auto it = std::lower_bound(nodes_.begin(), nodes_.end(), b,
                                   [](const node_rec& n, block_address x) { return n.loc < x; });
        return (it != nodes_.end() && it->loc == b) ? static_cast<long>(it - nodes_.begin()) : -1;
    }

    kind kind_of(std::size_t i, unsigned depth) {
        node_rec& n = nodes_[i];
        if (n.k == kind::in_progress) return kind::other;  // a cycle
        if (n.k != kind::unknown) return n.k;
        if (depth > MAX_DEPTH) return kind::other;
        if (n.leaf) {
            if (n.value_size == device_details::DISK_SIZE) {
                n.k = kind::details;
            } else if (n.value_size == 8) {
                n.k = kind::level2;
                if (n.maybe_top) {
                    bool all = true;
                    for (std::uint32_t j = 0; j < n.ref_count && all; ++j) {
                        long c = find(refs_[n.ref_begin + j]);
                        all = c >= 0 && nodes_[c].value_size == 8;
                    }
                    if (all) n.k = kind::top;
                }
            } else {
                n.k = kind::other;
            }
            return n.k;
        }
        n.k = kind::in_progress;
        kind k = kind::other;
        for (std::uint32_t j = 0; j < n.ref_count; ++j) {
            long c = find(refs_[n.ref_begin + j]);
            if (c < 0) continue;
            k = kind_of(static_cast<std::size_t>(c), depth + 1);
            break;
        }
        nodes_[i].k = k;  // kind_of may not invalidate n (no insertion), but be explicit
        return k;
    }

    block_address nr_blocks_;
    std::vector<node_rec> nodes_;
    std::vector<block_address> refs_;
};

struct aligned_buffer {
    std::uint8_t* p;
    explicit aligned_buffer(std::size_t bytes) : p(static_cast<std::uint8_t*>(std::aligned_alloc(MD_BLOCK_SIZE, bytes))) {
        if (!p) throw std::bad_alloc();
    }
    ~aligned_buffer() { std::free(p); }
    aligned_buffer(const aligned_buffer&) = delete;
    aligned_buffer& operator=(const aligned_buffer&) = delete;
};

} // namespace

scan_result scan_metadata(block_manager& bm, const std::function<void(std::uint64_t, std::uint64_t)>& progress) {
    io_engine& engine = bm.engine();
    scan_result out;
    out.nr_blocks = engine.nr_blocks();
    classifier c(out.nr_blocks);

    aligned_buffer buf(std::size_t(BATCH) * MD_BLOCK_SIZE);
    std::vector<io_request> reqs;
    reqs.reserve(BATCH);
    for (block_address b = 0; b < out.nr_blocks; b += BATCH) {
        unsigned n = static_cast<unsigned>(std::min<block_address>(BATCH, out.nr_blocks - b));
        reqs.clear();
        for (unsigned i = 0; i < n; ++i) reqs.push_back({b + i, buf.p + std::size_t(i) * MD_BLOCK_SIZE});
        std::vector<bool> ok(n, true);
        try {
            engine.read_many(reqs);
        } catch (const io_error&) {
            // Find the readable blocks of the batch one by one.
            for (unsigned i = 0; i < n; ++i) {
                try {
                    engine.read(b + i, reqs[i].buf);
                } catch (const io_error&) {
                    ok[i] = false;
                }
            }
        }
        for (unsigned i = 0; i < n; ++i)
            if (ok[i]) c.add_block(b + i, buf.p + std::size_t(i) * MD_BLOCK_SIZE, out);
        if (progress) progress(b + n, out.nr_blocks);
    }
    c.finish(out);
    return out;
}

} // namespace thin::repair
