#include "thin/check/tree_walk.h"

#include "persistent-data/checksum.h"
#include "persistent-data/endian.h"

namespace thin::check {

using namespace pdata;

namespace {

class counting_visitor : public btree::walk_visitor {
public:
    counting_visitor(block_manager& bm, metadata_refs* md, bool values_are_blocks, const tree_walk_callbacks& cb)
        : bm_(bm), md_(md), values_are_blocks_(values_are_blocks), cb_(cb) {}

    bool visit_node(unsigned, const std::vector<std::uint64_t>&, block_address b, btree::node_ref n) override {
        if (!md_ || !md_->first_sight(b)) return true;
        if (n.is_internal() || values_are_blocks_)
            for (unsigned i = 0; i < n.nr_entries(); ++i) md_->inc(n.value64(i));
        return true;
    }
    void visit_value(const std::vector<std::uint64_t>&, std::uint64_t key, const std::uint8_t* v) override {
        if (cb_.value) cb_.value(key, v);
    }
    void visit_damage(const std::vector<std::uint64_t>&, btree::key_range lost, block_address b,
                      const std::string& what) override {
        if (cb_.damage) cb_.damage(lost, b, explain(b, what));
    }
    void visit_warning(const std::vector<std::uint64_t>&, block_address b, const std::string& what) override {
        if (cb_.warning) cb_.warning(b, what);
    }

private:
    // The node validator looks at blocknr before the checksum; like the reference, name a bad
    // checksum first (a zeroed or overwritten block fails both).
    std::string explain(block_address b, const std::string& what) {
        if (what.find("blocknr field") == std::string::npos) return what;
        try {
            read_ref r = bm_.read_lock(b, noop_validator());
            if (load_le32(r.data()) != block_checksum(r.data(), block_salt::btree_node)) return "bad checksum in btree node";
        } catch (const std::exception&) {
        }
        return what;
    }

    block_manager& bm_;
    metadata_refs* md_;
    bool values_are_blocks_;
    const tree_walk_callbacks& cb_;
};

} // namespace

void walk_tree(block_manager& bm, block_address root, std::uint32_t value_size, metadata_refs* md,
               bool values_are_blocks, const tree_walk_callbacks& cb) {
    counting_visitor v(bm, md, values_are_blocks, cb);
    btree::walk(bm, root, btree::walk_options{1, value_size}, v);
}

} // namespace thin::check
