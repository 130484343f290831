#include "thin/check/mapping_check.h"

#include "persistent-data/btree/node.h"
#include "persistent-data/checksum.h"
#include "persistent-data/endian.h"
#include "persistent-data/io_engine.h"
#include "thin/metadata/mapping.h"

#include <algorithm>
#include <atomic>
#include <exception>
#include <limits>
#include <mutex>
#include <thread>

namespace thin::check {

using namespace pdata;
using pdata::btree::node_ref;

namespace {

constexpr std::uint32_t NONE = std::numeric_limits<std::uint32_t>::max();
// Deeper than this is a loop or garbage: a valid tree never comes close (252^8 > 2^63).
constexpr unsigned MAX_DEPTH = 32;
// Leaves read per batch and thread (1 MiB of buffer each).
constexpr std::size_t BATCH = 256;
constexpr std::uint32_t MAPPING_VALUE_SIZE = 8;

std::string keys_out_of_order(unsigned i, std::uint64_t a, std::uint64_t b) {
    return "keys out of order: key[" + std::to_string(i - 1) + "] = " + std::to_string(a) + ", key[" +
           std::to_string(i) + "] = " + std::to_string(b);
}

} // namespace

std::string node_problem(const std::uint8_t* d, block_address b, std::uint32_t leaf_value_size) {
    node_ref n(d);
    if (load_le32(d) != block_checksum(d, block_salt::btree_node)) return "bad checksum in btree node";
    if (n.blocknr() != b) return "btree node claims to be block " + std::to_string(n.blocknr());
    if (!n.is_leaf() && !n.is_internal()) return "btree node has bad flags " + std::to_string(n.flags());
    if (!btree::entries_fit(n.max_entries(), n.value_size()))
        return "btree node: max_entries " + std::to_string(n.max_entries()) + " with value_size " +
               std::to_string(n.value_size()) + " does not fit in a block";
    if (n.nr_entries() > n.max_entries())
        return "btree node: nr_entries " + std::to_string(n.nr_entries()) + " > max_entries " +
               std::to_string(n.max_entries());
    std::uint32_t want = n.is_internal() ? 8 : leaf_value_size;
    if (n.value_size() != want)
        return std::string(n.is_internal() ? "internal node" : "leaf") + " has value_size " +
               std::to_string(n.value_size()) + ", expected " + std::to_string(want);
    unsigned nr = n.nr_entries();
    const std::uint8_t* keys = d + btree::NODE_HEADER_SIZE;
    std::uint64_t prev = load_le64(keys);
    for (unsigned i = 1; i < nr; ++i) {
        std::uint64_t k = load_le64(keys + 8 * i);
        if (k <= prev) return keys_out_of_order(i, prev, k);
        prev = k;
    }
    return {};
}

mapping_checker::mapping_checker(block_manager& bm, metadata_refs* md, data_counts* data,
                                 std::uint64_t nr_data_blocks, unsigned threads)
    : bm_(bm), md_(md), data_(data), nr_data_blocks_(nr_data_blocks), threads_(std::max(1u, threads)) {
    nr_md_blocks_ = bm.nr_blocks();
    if (md_) nr_md_blocks_ = std::min(nr_md_blocks_, md_->nr_blocks());
    index_ = calloc_array<std::uint32_t>(nr_md_blocks_);
}

mapping_checker::~mapping_checker() = default;

std::uint32_t mapping_checker::new_node(block_address b, kind k) {
    if (nodes_.size() >= NONE - 1) throw std::length_error("too many btree nodes");
    auto idx = static_cast<std::uint32_t>(nodes_.size());
    node n;
    n.block = b;
    n.k = k;
    nodes_.push_back(n);
    if (b < nr_md_blocks_) index_[b] = idx + 1;
    return idx;
}

std::uint32_t mapping_checker::bad_node(block_address b, const std::string& what, bool indexed) {
    std::uint32_t idx;
    if (indexed) {
        idx = new_node(b, kind::bad);
    } else {
        idx = static_cast<std::uint32_t>(nodes_.size());
        node n;
        n.block = b;
        n.k = kind::bad;
        nodes_.push_back(n);
    }
    nodes_[idx].aux = static_cast<std::uint32_t>(errors_.size());
    errors_.push_back(what);
    return idx;
}

void mapping_checker::inspect_leaf(const std::uint8_t* d, node& n) {
    node_ref r(d);
    n.nr_entries = r.nr_entries();
    n.max_entries = r.max_entries();
    n.flags = 0;
    if (n.max_entries % 3) n.flags |= MAX_NOT_MULTIPLE_OF_3;
    if (n.nr_entries < n.max_entries / 3) n.flags |= UNDER_FULL;
    if (n.nr_entries) {
        n.first_key = r.key(0);
        n.last_key = r.key(n.nr_entries - 1);
    }
    std::uint32_t oob = 0;
    if (nr_data_blocks_) {
        const std::uint8_t* v = r.value(0);
        for (unsigned i = 0; i < n.nr_entries; ++i)
            oob += (load_le64(v + 8 * i) >> 24) >= nr_data_blocks_;
    }
    n.aux = oob;
}

void mapping_checker::count_leaf(const std::uint8_t* d, const node& n) {
    if (!data_) return;
    node_ref r(d);
    const std::uint8_t* v = r.value(0);
    std::uint64_t limit = data_->nr_blocks();
    for (unsigned i = 0; i < n.nr_entries; ++i) {
        std::uint64_t db = load_le64(v + 8 * i) >> 24;
        if (db < limit) data_->inc(db);
    }
}

// A leaf read during discovery (single-threaded).
void mapping_checker::finish_leaf(const std::uint8_t* d, std::uint32_t idx) {
    node& n = nodes_[idx];
    n.k = kind::leaf;
    inspect_leaf(d, n);
    count_leaf(d, n);
    ++nr_leaves_;
}

std::uint32_t mapping_checker::discover(block_address b) {
    if (b >= nr_md_blocks_) {
        std::string what = md_ && b < bm_.nr_blocks()
                               ? "reference to block " + std::to_string(b) + " beyond the end of the metadata space map"
                               : "reference to block " + std::to_string(b) + " beyond the end of the metadata device";
        return bad_node(b, what, false);
    }
    if (index_[b]) return index_[b] - 1;
    if (depth_ >= MAX_DEPTH) return bad_node(b, "tree deeper than " + std::to_string(MAX_DEPTH) + " levels", false);

    read_ref ref;
    try {
        ref = bm_.read_lock(b, noop_validator());
    } catch (const std::exception& e) {
        return bad_node(b, e.what(), true);
    }
    const std::uint8_t* d = ref.data();
    std::string problem = node_problem(d, b, MAPPING_VALUE_SIZE);
    if (!problem.empty()) return bad_node(b, problem, true);

    node_ref r(d);
    std::uint32_t idx = new_node(b, kind::pending);
    if (r.is_leaf()) {
        finish_leaf(d, idx);
        return idx;
    }

    // Internal node: remember its children and count their references (first sight only).
    node& n0 = nodes_[idx];
    n0.k = kind::internal;
    n0.nr_entries = r.nr_entries();
    n0.max_entries = r.max_entries();
    if (n0.max_entries % 3) n0.flags |= MAX_NOT_MULTIPLE_OF_3;
    if (n0.nr_entries < n0.max_entries / 3) n0.flags |= UNDER_FULL;
    if (n0.nr_entries) {
        n0.first_key = r.key(0);
        n0.last_key = r.key(n0.nr_entries - 1);
    }
    n0.aux = static_cast<std::uint32_t>(internals_.size());
    internal in;
    in.first_child = static_cast<std::uint32_t>(child_nodes_.size());
    internals_.push_back(in);
    unsigned nr = r.nr_entries();
    for (unsigned i = 0; i < nr; ++i) {
        child_keys_.push_back(r.key(i));
        child_nodes_.push_back(NONE);
    }
    std::vector<block_address> children(nr);
    for (unsigned i = 0; i < nr; ++i) {
        children[i] = r.value64(i);
        if (md_) md_->inc(children[i]);
    }
    ref.release();

    // The first child whose kind is known says whether this node's children are leaves.
    enum { unknown, leaves, internals } mode = unknown;
    ++depth_;
    for (unsigned i = 0; i < nr; ++i) {
        block_address c = children[i];
        std::uint32_t ci;
        if (c < nr_md_blocks_ && index_[c]) {
            ci = index_[c] - 1;
        } else if (mode == leaves && c < nr_md_blocks_) {
            ci = new_node(c, kind::pending);
            pending_.push_back(ci);
        } else {
            ci = discover(c);
        }
        child_nodes_[internals_[nodes_[idx].aux].first_child + i] = ci;
        if (mode == unknown) {
            kind k = nodes_[ci].k;
            if (k == kind::leaf || k == kind::pending) mode = leaves;
            else if (k == kind::internal) mode = internals;
        }
    }
    --depth_;
    return idx;
}

unsigned mapping_checker::add_tree(block_address root) { return discover(root); }

void mapping_checker::read_leaves(const std::function<void(std::uint64_t, std::uint64_t)>& progress) {
    std::sort(pending_.begin(), pending_.end(),
              [this](std::uint32_t a, std::uint32_t b) { return nodes_[a].block < nodes_[b].block; });
    const std::size_t total = pending_.size();
    if (!total) return;

    io_engine& engine = bm_.engine();
    std::mutex io_mutex, count_mutex;
    std::size_t next = 0;
    std::uint64_t done = 0;
    std::exception_ptr failure;
    std::atomic<bool> stop{false};

    auto worker = [&]() {
        try {
            auto buf = std::unique_ptr<std::uint8_t[], free_deleter>(
                static_cast<std::uint8_t*>(std::aligned_alloc(MD_BLOCK_SIZE, BATCH * MD_BLOCK_SIZE)));
            if (!buf) throw std::bad_alloc();
            std::vector<io_request> reqs;
            std::vector<std::string> read_errors(BATCH);
            std::vector<std::string> problems(BATCH);
            reqs.reserve(BATCH);
            while (!stop) {
                std::size_t begin, end;
                {
                    std::lock_guard lk(io_mutex);
                    if (next >= total) break;
                    begin = next;
                    end = std::min(total, begin + BATCH);
                    next = end;
                    reqs.clear();
                    for (std::size_t i = begin; i < end; ++i)
                        reqs.push_back({nodes_[pending_[i]].block, buf.get() + (i - begin) * MD_BLOCK_SIZE});
                    for (auto& e : read_errors) e.clear();
                    try {
                        engine.read_many(reqs);
                    } catch (const io_error&) {
                        // Find out which blocks fail; the others are still worth checking.
                        for (std::size_t i = 0; i < reqs.size(); ++i) {
                            try {
                                engine.read(reqs[i].block, reqs[i].buf);
                            } catch (const io_error& e) {
                                read_errors[i] = e.what();
                            }
                        }
                    }
                }
                // Validate in parallel: each thread writes only its own batch's nodes.
                for (std::size_t i = begin; i < end; ++i) {
                    node& n = nodes_[pending_[i]];
                    const std::uint8_t* d = buf.get() + (i - begin) * MD_BLOCK_SIZE;
                    std::string& p = problems[i - begin];
                    p = read_errors[i - begin];
                    if (p.empty()) p = node_problem(d, n.block, MAPPING_VALUE_SIZE);
                    if (p.empty() && !node_ref(d).is_leaf())
                        p = "internal node where a leaf is expected (leaves of a tree are all at one depth)";
                    if (p.empty()) inspect_leaf(d, n);
                }
                std::lock_guard lk(count_mutex);
                for (std::size_t i = begin; i < end; ++i) {
                    node& n = nodes_[pending_[i]];
                    if (!problems[i - begin].empty()) {
                        n.k = kind::bad;
                        n.aux = static_cast<std::uint32_t>(errors_.size());
                        errors_.push_back(problems[i - begin]);
                        continue;
                    }
                    n.k = kind::leaf;
                    count_leaf(buf.get() + (i - begin) * MD_BLOCK_SIZE, n);
                }
                nr_leaves_ += end - begin;
                done += end - begin;
                if (progress) progress(done, total);
            }
        } catch (...) {
            std::lock_guard lk(count_mutex);
            if (!failure) failure = std::current_exception();
            stop = true;
        }
    };

    unsigned nthreads = static_cast<unsigned>(std::min<std::size_t>(threads_, (total + BATCH - 1) / BATCH));
    std::vector<std::thread> pool;
    for (unsigned t = 1; t < nthreads; ++t) pool.emplace_back(worker);
    worker();
    for (auto& t : pool) t.join();
    if (failure) std::rethrow_exception(failure);
    pending_.clear();
    pending_.shrink_to_fit();
}

// ---- evaluation of one tree ----

struct mapping_checker::eval_state {
    tree_summary* out;
    int leaf_depth = -1;
};

mapping_checker::eval_result mapping_checker::eval(eval_state& st, std::uint32_t idx, std::uint64_t lo,
                                                   std::optional<std::uint64_t> hi, unsigned depth) {
    eval_result res;
    node& n = nodes_[idx];
    auto lose = [&](const std::string& what) { st.out->damage.push_back({lo, hi, n.block, what}); };
    auto warn = [&]() {
        if ((n.flags & UNDER_FULL) && depth > 0 && !(n.flags & WARNED_UNDER_FULL)) {
            n.flags |= WARNED_UNDER_FULL;
            st.out->warnings.push_back("under-full btree node: " + std::to_string(n.nr_entries) +
                                       " entries, fewer than max_entries " + std::to_string(n.max_entries) +
                                       " / 3 (block " + std::to_string(n.block) + ")");
        }
        if ((n.flags & MAX_NOT_MULTIPLE_OF_3) && !(n.flags & WARNED_MAX)) {
            n.flags |= WARNED_MAX;
            st.out->warnings.push_back("btree node max_entries " + std::to_string(n.max_entries) +
                                       " is not a multiple of 3 (block " + std::to_string(n.block) + ")");
        }
    };

    if (depth >= MAX_DEPTH) {
        lose("tree deeper than " + std::to_string(MAX_DEPTH) + " levels (a cycle?)");
        return res;
    }
    switch (n.k) {
    case kind::bad:
        lose(errors_[n.aux]);
        return res;
    case kind::pending:
        lose("btree node was not read");
        return res;
    default:
        break;
    }
    bool is_leaf = n.k == kind::leaf;
    if (st.leaf_depth >= 0) {
        unsigned ld = static_cast<unsigned>(st.leaf_depth);
        if (is_leaf && depth != ld) {
            lose("leaf at depth " + std::to_string(depth) + " where an internal node is expected (leaves are at depth " +
                 std::to_string(ld) + ")");
            return res;
        }
        if (!is_leaf && depth >= ld) {
            lose("internal node at depth " + std::to_string(depth) + " where a leaf is expected");
            return res;
        }
    }
    if (n.nr_entries) {
        if (n.first_key < lo) {
            lose("first key " + std::to_string(n.first_key) + " is below the parent key " + std::to_string(lo));
            return res;
        }
        if (hi && n.last_key >= *hi) {
            lose("last key " + std::to_string(n.last_key) + " is not below the next parent key " + std::to_string(*hi));
            return res;
        }
    }
    warn();

    if (is_leaf) {
        if (st.leaf_depth < 0) st.leaf_depth = static_cast<int>(depth);
        res.mappings = n.nr_entries;
        res.out_of_range = n.aux;
        res.has_keys = n.nr_entries > 0;
        res.max_key = n.last_key;
        return res;
    }

    internal& in = internals_[n.aux];
    if (in.clean && (!in.has_keys || !hi || in.max_key < *hi)) {
        unsigned ld = depth + in.height;
        if (st.leaf_depth < 0) st.leaf_depth = static_cast<int>(ld);
        if (static_cast<unsigned>(st.leaf_depth) == ld) {
            res.mappings = in.mappings;
            res.out_of_range = in.out_of_range;
            res.has_keys = in.has_keys;
            res.max_key = in.max_key;
            return res;
        }
    }

    std::size_t damage_before = st.out->damage.size();
    std::uint32_t first = in.first_child;
    std::uint32_t nr = n.nr_entries;
    for (std::uint32_t i = 0; i < nr; ++i) {
        std::uint64_t clo = child_keys_[first + i];
        std::optional<std::uint64_t> chi = i + 1 < nr ? std::optional<std::uint64_t>(child_keys_[first + i + 1]) : hi;
        eval_result c = eval(st, child_nodes_[first + i], clo, chi, depth + 1);
        res.mappings += c.mappings;
        res.out_of_range += c.out_of_range;
        if (c.has_keys) {
            res.has_keys = true;
            res.max_key = c.max_key;
        }
    }
    // internals_ does not grow during evaluation, so `in` is still valid here.
    if (st.out->damage.size() == damage_before && st.leaf_depth >= 0 &&
        static_cast<unsigned>(st.leaf_depth) > depth) {
        in.clean = true;
        in.height = static_cast<unsigned>(st.leaf_depth) - depth;
        in.has_keys = res.has_keys;
        in.max_key = res.max_key;
        in.mappings = res.mappings;
        in.out_of_range = res.out_of_range;
    }
    return res;
}

tree_summary mapping_checker::evaluate(unsigned tree) {
    tree_summary out;
    eval_state st;
    st.out = &out;
    eval_result r = eval(st, tree, 0, std::nullopt, 0);
    out.mappings = r.mappings;
    out.out_of_range = r.out_of_range;
    return out;
}

} // namespace thin::check
