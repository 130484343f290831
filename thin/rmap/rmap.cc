#include "thin/rmap/rmap.h"

#include "thin/cli/text_output.h"
#include "thin/metadata/mapping_leaves.h"

#include "persistent-data/btree/node.h"
#include "persistent-data/endian.h"

#include <algorithm>
#include <cctype>
#include <span>
#include <stdexcept>

namespace thin::rmap {

using namespace pdata;
using pdata::btree::node_ref;

namespace {

// One unsigned number as `istream >> std::uint64_t` reads it: blanks, an optional sign (a minus
// negates modulo 2^64), at least one decimal digit; overflow fails.
bool parse_number(const std::string& s, std::size_t& pos, std::uint64_t& out) {
    while (pos < s.size() && std::isspace(static_cast<unsigned char>(s[pos]))) ++pos;
    bool negative = false;
    if (pos < s.size() && (s[pos] == '+' || s[pos] == '-')) negative = s[pos++] == '-';
    std::size_t start = pos;
    std::uint64_t v = 0;
    bool overflow = false;
    while (pos < s.size() && s[pos] >= '0' && s[pos] <= '9') {
        unsigned digit = unsigned(s[pos] - '0');
        if (v > (UINT64_MAX - digit) / 10) overflow = true;
        v = v * 10 + digit;
        ++pos;
    }
    if (pos == start || overflow) return false;
    out = negative ? (~v + 1) : v;
    return true;
}

class region_set {
public:
    explicit region_set(std::vector<region> rs) {
        std::sort(rs.begin(), rs.end(), [](const region& a, const region& b) { return a.begin < b.begin; });
        for (const auto& r : rs) {
            if (!r_.empty() && r.begin <= r_.back().end)
                r_.back().end = std::max(r_.back().end, r.end);
            else
                r_.push_back(r);
        }
    }
    bool contains(std::uint64_t d) const {
        if (r_.empty() || d < r_.front().begin || d >= r_.back().end) return false;
        if (r_.size() == 1) return true;
        auto it = std::upper_bound(r_.begin(), r_.end(), d, [](std::uint64_t v, const region& r) { return v < r.begin; });
        return d < std::prev(it)->end;
    }

private:
    std::vector<region> r_;
};

} // namespace

region parse_region(const std::string& text) {
    std::size_t pos = 0;
    region r;
    if (!parse_number(text, pos, r.begin) || text.compare(pos, 2, "..") != 0)
        throw std::invalid_argument("badly formed region (no dots)");
    pos += 2;
    if (!parse_number(text, pos, r.end)) throw std::invalid_argument("badly formed region (couldn't parse numbers)");
    if (r.end <= r.begin) throw std::invalid_argument("badly formed region (end <= begin)");
    return r;
}

std::vector<run> reverse_map(block_manager& bm, block_address mapping_root, std::vector<region> regions,
                             const rmap_options& opts, rmap_stats* stats) {
    region_set rs(std::move(regions));
    mapping_leaves ml = collect_mapping_leaves(bm, read_mapping_roots(bm, mapping_root));

    std::vector<block_address> order;
    order.reserve(ml.leaves.size());
    for (const auto& l : ml.leaves) order.push_back(l.block);
    leaf_reader reader(bm.engine(), std::move(order));

    std::vector<run> runs;
    for (std::size_t i = 0; i < ml.leaves.size(); ++i) {
        const mapping_leaf& l = ml.leaves[i];
        node_ref n(reader.get(i));
        check_mapping_leaf(n, l.block, l.first, l.last);
        const auto& owners = ml.owner_sets[l.owners];
        // 0.9.0 visits every node once: a shared leaf counts for the lowest device reaching it.
        std::span<const dev_id> devs(owners.data(), opts.all_devices ? owners.size() : 1);
        run cur;
        bool open = false;
        auto flush = [&] {
            if (!open) return;
            for (dev_id d : devs) {
                cur.dev = d;
                runs.push_back(cur);
            }
            open = false;
        };
        unsigned nr = n.nr_entries();
        for (unsigned e = 0; e < nr; ++e) {
            std::uint64_t d = load_le64(n.value(e)) >> 24;
            if (!rs.contains(d)) {
                flush();
                continue;
            }
            std::uint64_t v = n.key(e);
            if (open && cur.virt_begin + cur.length == v && cur.data_begin + cur.length == d) {
                ++cur.length;
            } else {
                flush();
                cur = run{d, 1, 0, v};
                open = true;
            }
        }
        flush();
    }

    // Join runs split by leaf boundaries: in device and virtual order, neighbours that continue.
    std::sort(runs.begin(), runs.end(), [](const run& a, const run& b) {
        return a.dev != b.dev ? a.dev < b.dev : a.virt_begin < b.virt_begin;
    });
    std::size_t w = 0;
    for (std::size_t r = 0; r < runs.size(); ++r) {
        if (w && runs[w - 1].dev == runs[r].dev && runs[w - 1].virt_begin + runs[w - 1].length == runs[r].virt_begin &&
            runs[w - 1].data_begin + runs[w - 1].length == runs[r].data_begin)
            runs[w - 1].length += runs[r].length;
        else
            runs[w++] = runs[r];
    }
    runs.resize(w);
    // Now in 0.9.0's visiting order (device, then virtual block). It then sorts on the data begin
    // alone with std::sort, which orders runs with equal data begins in a way that depends on the
    // sequence; the same algorithm on the same sequence gives its output byte for byte.
    std::sort(runs.begin(), runs.end(), [](const run& a, const run& b) { return a.data_begin < b.data_begin; });
    if (stats) {
        stats->leaves = ml.leaves.size();
        stats->internal_nodes = ml.internal_nodes;
    }
    return runs;
}

void write_runs(cli::text_output& out, const std::vector<run>& runs) {
    for (const auto& r : runs)
        out << "data " << r.data_begin << ".." << r.data_begin + r.length << " -> thin(" << r.dev << ") "
            << r.virt_begin << ".." << r.virt_begin + r.length << "\n";
    out.flush();
}

} // namespace thin::rmap
