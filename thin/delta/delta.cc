#include "thin/delta/delta.h"

#include "thin/cli/text_output.h"
#include "thin/metadata/mapping_leaves.h"

#include "persistent-data/btree/node.h"

#include <algorithm>
#include <cstring>
#include <optional>

namespace thin::delta {

using namespace pdata;
using pdata::btree::node_ref;

const char* kind_name(kind k) {
    switch (k) {
    case kind::same: return "same";
    case kind::different: return "different";
    case kind::left_only: return "left_only";
    case kind::right_only: return "right_only";
    }
    return "?";
}

namespace {

constexpr dev_id LEFT = 0;
constexpr dev_id RIGHT = 1;

// Turns the classified mappings (in virtual block order) into pieces.
class piece_builder {
public:
    explicit piece_builder(piece_sink& out) : out_(out) {}

    void left_only(std::uint64_t v, std::uint64_t d) { add(kind::left_only, v, &d, nullptr); }
    void right_only(std::uint64_t v, std::uint64_t d) { add(kind::right_only, v, nullptr, &d); }
    void both(std::uint64_t v, std::uint64_t dl, std::uint64_t dr) {
        add(dl == dr ? kind::same : kind::different, v, &dl, &dr);
    }
    void finish() {
        if (active_) out_.add(cur_);
        active_ = false;
    }

private:
    struct last_mapping {
        bool has = false;
        std::uint64_t v = 0, d = 0;
        // Does (v, d) continue this side's run?
        bool continued_by(std::uint64_t nv, std::uint64_t nd) const { return has && v + 1 == nv && d + 1 == nd; }
    };

    void add(kind k, std::uint64_t v, const std::uint64_t* dl, const std::uint64_t* dr) {
        bool extends = active_ && cur_.k == k && cur_.begin + cur_.length == v &&
                       (!dl || left_.continued_by(v, *dl)) && (!dr || right_.continued_by(v, *dr));
        if (extends) {
            ++cur_.length;
        } else {
            if (active_) out_.add(cur_);
            cur_ = piece{k, v, 1, dl ? *dl : 0, dr ? *dr : 0};
            active_ = true;
        }
        if (dl) left_ = {true, v, *dl};
        if (dr) right_ = {true, v, *dr};
    }

    piece_sink& out_;
    piece cur_;
    bool active_ = false;
    last_mapping left_, right_;
};

// One tree's leaves in key order, each copied out of the shared reader when reached.
class side_cursor {
public:
    side_cursor(leaf_reader& reader, const std::vector<mapping_leaf>& leaves, std::vector<std::size_t> seq)
        : reader_(reader), leaves_(leaves), seq_(std::move(seq)), buf_(make_aligned_block(false)) {
        load();
    }
    bool valid() const { return pos_ < nr_; }
    // Index (in the reader's order) of the current leaf.
    std::size_t leaf() const { return seq_[cur_]; }
    bool at_leaf_start() const { return pos_ == 0; }
    std::uint64_t key() const { return node_ref(buf_.get()).key(pos_); }
    std::uint64_t data() const { return load_le64(node_ref(buf_.get()).value(pos_)) >> 24; }
    void advance() {
        if (++pos_ == nr_) next_leaf();
    }
    // The whole current leaf, then move past it.
    node_ref whole_leaf() const { return node_ref(buf_.get()); }
    void skip_leaf() { next_leaf(); }

private:
    void next_leaf() {
        ++cur_;
        load();
    }
    // Makes seq_[cur_] (or the next non-empty leaf after it) current.
    void load() {
        pos_ = nr_ = 0;
        for (; cur_ < seq_.size(); ++cur_) {
            std::size_t i = seq_[cur_];
            const std::uint8_t* p = reader_.get(i);
            const mapping_leaf& l = leaves_[i];
            check_mapping_leaf(node_ref(p), l.block, l.first, l.last);
            std::memcpy(buf_.get(), p, MD_BLOCK_SIZE);
            nr_ = node_ref(buf_.get()).nr_entries();
            if (nr_) return;
        }
    }

    leaf_reader& reader_;
    const std::vector<mapping_leaf>& leaves_;
    std::vector<std::size_t> seq_;
    std::size_t cur_ = 0;
    unsigned pos_ = 0, nr_ = 0;
    aligned_block buf_;
};

} // namespace

diff_stats diff_trees(block_manager& bm, block_address left_root, block_address right_root, piece_sink& out) {
    mapping_leaves ml = collect_mapping_leaves(bm, {{LEFT, left_root}, {RIGHT, right_root}});
    diff_stats st;
    st.internal_nodes = ml.internal_nodes;

    // Key order: parent ranges within one tree are disjoint, so sorting by the range start orders
    // each tree's leaves; merged, it is the order the walk in step needs them.
    std::vector<mapping_leaf>& leaves = ml.leaves;
    std::sort(leaves.begin(), leaves.end(), [](const mapping_leaf& a, const mapping_leaf& b) {
        return a.first != b.first ? a.first < b.first : a.block < b.block;
    });
    std::vector<block_address> order;
    std::vector<std::size_t> lseq, rseq;
    for (std::size_t i = 0; i < leaves.size(); ++i) {
        order.push_back(leaves[i].block);
        const auto& owners = ml.owner_sets[leaves[i].owners];
        bool l = std::find(owners.begin(), owners.end(), LEFT) != owners.end();
        bool r = std::find(owners.begin(), owners.end(), RIGHT) != owners.end();
        if (l) lseq.push_back(i);
        if (r) rseq.push_back(i);
        if (l && r) ++st.shared_leaves;
    }

    leaf_reader reader(bm.engine(), std::move(order), 256);
    side_cursor L(reader, leaves, std::move(lseq));
    side_cursor R(reader, leaves, std::move(rseq));
    piece_builder b(out);

    while (L.valid() && R.valid()) {
        if (L.leaf() == R.leaf() && L.at_leaf_start() && R.at_leaf_start()) {
            // A shared leaf: the same mappings on both sides.
            node_ref n = L.whole_leaf();
            unsigned nr = n.nr_entries();
            for (unsigned i = 0; i < nr; ++i) {
                std::uint64_t d = load_le64(n.value(i)) >> 24;
                b.both(n.key(i), d, d);
            }
            L.skip_leaf();
            R.skip_leaf();
            continue;
        }
        std::uint64_t kl = L.key(), kr = R.key();
        if (kl < kr) {
            b.left_only(kl, L.data());
            L.advance();
        } else if (kr < kl) {
            b.right_only(kr, R.data());
            R.advance();
        } else {
            b.both(kl, L.data(), R.data());
            L.advance();
            R.advance();
        }
    }
    for (; L.valid(); L.advance()) b.left_only(L.key(), L.data());
    for (; R.valid(); R.advance()) b.right_only(R.key(), R.data());
    b.finish();
    st.leaves_read = reader.reads();
    return st;
}

// ---------------------------------------------------------------------------------------------
// emitters

namespace {

class xml_emitter : public emitter {
public:
    xml_emitter(cli::text_output& out, bool verbose, const superblock& sb, side left, side right)
        : out_(out), verbose_(verbose) {
        out_ << "<superblock uuid=\"\" time=\"" << sb.time << "\" transaction=\"" << sb.trans_id
             << "\" data_block_size=\"" << sb.data_block_size << "\" nr_data_blocks=\"" << sb.data_sm().nr_blocks
             << "\"";
        if (sb.metadata_snap) out_ << " metadata_snap=\"" << sb.metadata_snap << "\"";
        out_ << ">\n  <diff " << (left.is_root ? "left_root" : "left") << "=\"" << left.value << "\" "
             << (right.is_root ? "right_root" : "right") << "=\"" << right.value << "\">\n";
    }

    void add(const piece& p) override {
        if (verbose_) {
            if (!open_ || group_ != p.k) {
                close_group();
                out_ << "    <" << kind_name(p.k) << ">\n";
                group_ = p.k;
                open_ = true;
            }
            out_ << "      <range begin=\"" << p.begin << "\"";
            switch (p.k) {
            case kind::different:
                out_ << " left_data_begin=\"" << p.left_data << "\" right_data_begin=\"" << p.right_data << "\"";
                break;
            case kind::right_only:
                out_ << " data_begin=\"" << p.right_data << "\"";
                break;
            default:
                out_ << " data_begin=\"" << p.left_data << "\"";
            }
            out_ << " length=\"" << p.length << "\"/>\n";
            return;
        }
        if (open_ && cur_.k == p.k && cur_.begin + cur_.length == p.begin) {
            cur_.length += p.length;
            return;
        }
        emit_short();
        cur_ = p;
        open_ = true;
    }

    void finish() override {
        if (verbose_)
            close_group();
        else
            emit_short();
        out_ << "  </diff>\n</superblock>\n";
        out_.flush();
    }

private:
    void close_group() {
        if (open_) out_ << "    </" << kind_name(group_) << ">\n";
        open_ = false;
    }
    void emit_short() {
        if (open_) out_ << "    <" << kind_name(cur_.k) << " begin=\"" << cur_.begin << "\" length=\"" << cur_.length << "\"/>\n";
        open_ = false;
    }

    cli::text_output& out_;
    bool verbose_;
    bool open_ = false;
    kind group_ = kind::same;
    piece cur_;
};

// JSON (not in 0.9.0): one object; "ranges" lists the short form's merged ranges, or with
// verbose every piece with its data blocks.
class json_emitter : public emitter {
public:
    json_emitter(cli::text_output& out, bool verbose, const superblock& sb, side left, side right)
        : out_(out), verbose_(verbose) {
        out_ << "{\n  \"superblock\": {\"uuid\": \"\", \"time\": " << sb.time << ", \"transaction\": " << sb.trans_id
             << ", \"data_block_size\": " << sb.data_block_size << ", \"nr_data_blocks\": " << sb.data_sm().nr_blocks;
        if (sb.metadata_snap) out_ << ", \"metadata_snap\": " << sb.metadata_snap;
        out_ << "},\n  \"" << (left.is_root ? "left_root" : "left") << "\": " << left.value << ",\n  \""
             << (right.is_root ? "right_root" : "right") << "\": " << right.value << ",\n  \"ranges\": [";
    }

    void add(const piece& p) override {
        if (verbose_) {
            write(p);
            return;
        }
        if (open_ && cur_.k == p.k && cur_.begin + cur_.length == p.begin) {
            cur_.length += p.length;
            return;
        }
        if (open_) write(cur_);
        cur_ = p;
        open_ = true;
    }

    void finish() override {
        if (!verbose_ && open_) write(cur_);
        out_ << (first_ ? "]\n}\n" : "\n  ]\n}\n");
        out_.flush();
    }

private:
    void write(const piece& p) {
        out_ << (first_ ? "\n" : ",\n") << "    {\"type\": \"" << kind_name(p.k) << "\", \"begin\": " << p.begin;
        if (verbose_) {
            switch (p.k) {
            case kind::different:
                out_ << ", \"left_data_begin\": " << p.left_data << ", \"right_data_begin\": " << p.right_data;
                break;
            case kind::right_only:
                out_ << ", \"data_begin\": " << p.right_data;
                break;
            default:
                out_ << ", \"data_begin\": " << p.left_data;
            }
        }
        out_ << ", \"length\": " << p.length << "}";
        first_ = false;
    }

    cli::text_output& out_;
    bool verbose_;
    bool open_ = false;
    bool first_ = true;
    piece cur_;
};

} // namespace

std::unique_ptr<emitter> make_emitter(cli::text_output& out, const report_options& opts, const superblock& sb,
                                      side left, side right) {
    if (opts.fmt == format::json) return std::make_unique<json_emitter>(out, opts.verbose, sb, left, right);
    return std::make_unique<xml_emitter>(out, opts.verbose, sb, left, right);
}

} // namespace thin::delta
