#include "thin/ls/ls.h"

#include "thin/metadata/mapping_leaves.h"

#include "persistent-data/btree/node.h"
#include "persistent-data/endian.h"

#include <algorithm>
#include <cmath>
#include <sstream>
#include <stdexcept>

namespace thin::ls {

using namespace pdata;
using pdata::btree::node_ref;

namespace {

struct field_info {
    field f;
    const char* name;
};

const field_info FIELDS[] = {
    {field::dev, "DEV"},
    {field::mapped_blocks, "MAPPED_BLOCKS"},
    {field::exclusive_blocks, "EXCLUSIVE_BLOCKS"},
    {field::shared_blocks, "SHARED_BLOCKS"},
    {field::mapped_sectors, "MAPPED_SECTORS"},
    {field::exclusive_sectors, "EXCLUSIVE_SECTORS"},
    {field::shared_sectors, "SHARED_SECTORS"},
    {field::mapped_bytes, "MAPPED_BYTES"},
    {field::exclusive_bytes, "EXCLUSIVE_BYTES"},
    {field::shared_bytes, "SHARED_BYTES"},
    {field::mapped, "MAPPED"},
    {field::exclusive, "EXCLUSIVE"},
    {field::shared, "SHARED"},
    {field::transaction, "TRANSACTION"},
    {field::create_time, "CREATE_TIME"},
    {field::snap_time, "SNAP_TIME"},
    {field::highest_block, "HIGHEST_BLOCK"},
    {field::highest_sector, "HIGHEST_SECTOR"},
    {field::highest_byte, "HIGHEST_BYTE"},
    {field::highest_mapped, "HIGHEST_MAPPED"},
};

// Per data block: 0 unseen, 1 referenced by one device mapping, 2 by more. Four per byte.
class two_bit_counts {
public:
    // nr_blocks (the data space map's size) is only a hint: add() grows the table as needed, and a
    // corrupt superblock may claim any size.
    explicit two_bit_counts(std::uint64_t nr_blocks) { grow(std::min(nr_blocks, INITIAL_LIMIT)); }

    void add(std::uint64_t b, unsigned k) {
        if (b >= size_) grow_for(b);
        std::uint8_t& byte = bytes_[b >> 2];
        unsigned shift = unsigned(b & 3) * 2;
        unsigned cur = (byte >> shift) & 3;
        unsigned nv = std::min(2u, cur + k);
        byte = static_cast<std::uint8_t>((byte & ~(3u << shift)) | (nv << shift));
    }
    unsigned get(std::uint64_t b) const {
        if (b >= size_) return 0;
        return (bytes_[b >> 2] >> (unsigned(b & 3) * 2)) & 3;
    }

private:
    // Data blocks are 40-bit; beyond 2^36 (16 GiB of counts) the value is garbage, not a pool.
    static constexpr std::uint64_t LIMIT = 1ull << 36;
    static constexpr std::uint64_t INITIAL_LIMIT = 1ull << 26;
    void grow_for(std::uint64_t b) {
        if (b >= LIMIT)
            throw std::runtime_error("mapping to data block " + std::to_string(b) + " is beyond any data device");
        grow(std::max(b + 1, std::min(LIMIT, size_ * 2)));
    }
    void grow(std::uint64_t n) {
        size_ = n;
        bytes_.resize((n + 3) / 4, 0);
    }
    std::uint64_t size_ = 0;
    std::vector<std::uint8_t> bytes_;
};

bool is_counting(field f) {
    switch (f) {
    case field::exclusive_blocks: case field::shared_blocks:
    case field::exclusive_sectors: case field::shared_sectors:
    case field::exclusive_bytes: case field::shared_bytes:
    case field::exclusive: case field::shared:
        return true;
    default:
        return false;
    }
}

bool is_highest(field f) {
    return f == field::highest_block || f == field::highest_sector || f == field::highest_byte ||
           f == field::highest_mapped;
}

bool is_pretty(field f) {
    return f == field::mapped || f == field::exclusive || f == field::shared || f == field::highest_mapped;
}

// Exclusive mappings per device (see the header).
std::map<dev_id, std::uint64_t> count_exclusive(block_manager& bm, const std::map<dev_id, block_address>& roots,
                                                std::uint64_t nr_data_blocks, scan_stats* stats) {
    mapping_leaves ml = collect_mapping_leaves(bm, roots);
    two_bit_counts counts(nr_data_blocks);

    std::vector<block_address> order;
    order.reserve(ml.leaves.size());
    for (const auto& l : ml.leaves) order.push_back(l.block);
    std::uint64_t reads = 0;
    {
        leaf_reader reader(bm.engine(), order);
        for (std::size_t i = 0; i < ml.leaves.size(); ++i) {
            const mapping_leaf& l = ml.leaves[i];
            node_ref n(reader.get(i));
            check_mapping_leaf(n, l.block, l.first, l.last);
            unsigned k = static_cast<unsigned>(std::min<std::size_t>(2, ml.owner_sets[l.owners].size()));
            unsigned nr = n.nr_entries();
            for (unsigned e = 0; e < nr; ++e) counts.add(load_le64(n.value(e)) >> 24, k);
        }
        reads += reader.reads();
    }

    std::map<dev_id, std::uint64_t> exclusive;
    std::vector<std::size_t> single;
    order.clear();
    for (std::size_t i = 0; i < ml.leaves.size(); ++i)
        if (ml.owner_sets[ml.leaves[i].owners].size() == 1) {
            single.push_back(i);
            order.push_back(ml.leaves[i].block);
        }
    {
        leaf_reader reader(bm.engine(), order);
        for (std::size_t j = 0; j < single.size(); ++j) {
            const mapping_leaf& l = ml.leaves[single[j]];
            node_ref n(reader.get(j));
            unsigned nr = n.nr_entries();
            std::uint64_t excl = 0;
            for (unsigned e = 0; e < nr; ++e) excl += counts.get(load_le64(n.value(e)) >> 24) == 1;
            exclusive[ml.owner_sets[l.owners].front()] += excl;
        }
        reads += reader.reads();
    }
    if (stats) {
        stats->leaves = ml.leaves.size();
        stats->leaf_reads = reads;
        stats->internal_nodes = ml.internal_nodes;
    }
    return exclusive;
}

} // namespace

const std::vector<field>& all_fields() {
    static const std::vector<field> v = [] {
        std::vector<field> r;
        for (const auto& fi : FIELDS) r.push_back(fi.f);
        return r;
    }();
    return v;
}

const std::vector<field>& default_fields() {
    static const std::vector<field> v{field::dev, field::mapped, field::create_time, field::snap_time};
    return v;
}

const char* field_name(field f) {
    for (const auto& fi : FIELDS)
        if (fi.f == f) return fi.name;
    return "?";
}

std::vector<field> parse_fields(const std::string& list) {
    std::vector<field> out;
    std::istringstream in(list);
    std::string name;
    while (std::getline(in, name, ',')) {
        auto it = std::find_if(std::begin(FIELDS), std::end(FIELDS), [&](const field_info& fi) { return name == fi.name; });
        if (it == std::end(FIELDS)) throw std::invalid_argument("unknown field");
        out.push_back(it->f);
    }
    return out;
}

std::string pretty_size(std::uint64_t bytes) {
    static const char* const UNITS[] = {"", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
    std::uint64_t n = bytes;
    unsigned i = 0;
    while (n > 1048576) {
        n /= 1024;
        ++i;
    }
    if (n > 8192) {
        n = static_cast<std::uint64_t>(std::llround(static_cast<double>(n) / 1024.0));
        ++i;
    }
    return std::to_string(n) + UNITS[i];
}

bool needs_counting(const std::vector<field>& fields) {
    return std::any_of(fields.begin(), fields.end(), is_counting);
}

bool needs_highest(const std::vector<field>& fields) {
    return std::any_of(fields.begin(), fields.end(), is_highest);
}

std::vector<device_row> scan(block_manager& bm, const superblock& sb, std::uint64_t nr_data_blocks,
                             const std::vector<field>& fields, scan_stats* stats) {
    std::vector<device_row> rows;
    for (const auto& [dev, d] : read_device_details(bm, sb.device_details_root)) rows.push_back({dev, d, 0, {}});

    bool counting = needs_counting(fields), highest = needs_highest(fields);
    if (!counting && !highest) return rows;

    std::map<dev_id, block_address> roots = read_mapping_roots(bm, sb.data_mapping_root);
    std::map<dev_id, block_address> wanted;
    for (const auto& r : rows) {
        auto it = roots.find(r.dev);
        if (it == roots.end())
            throw std::runtime_error("device " + std::to_string(r.dev) + " has details but no mapping tree");
        wanted.emplace(r.dev, it->second);
    }
    if (counting) {
        auto excl = count_exclusive(bm, wanted, nr_data_blocks, stats);
        for (auto& r : rows) r.exclusive_blocks = excl[r.dev];
    }
    if (highest)
        for (auto& r : rows) r.highest = highest_mapped_block(bm, wanted[r.dev]);
    return rows;
}

std::string cell(const device_row& r, field f, std::uint32_t data_block_size) {
    const std::uint64_t bs = data_block_size;
    const std::uint64_t mapped = r.details.mapped_blocks;
    const std::uint64_t excl = r.exclusive_blocks;
    const std::uint64_t shared = mapped - excl;
    const std::uint64_t high = r.highest.value_or(0);
    std::uint64_t v = 0;
    switch (f) {
    case field::dev: v = r.dev; break;
    case field::mapped_blocks: v = mapped; break;
    case field::exclusive_blocks: v = excl; break;
    case field::shared_blocks: v = shared; break;
    case field::highest_block: v = high; break;
    case field::mapped_sectors: v = mapped * bs; break;
    case field::exclusive_sectors: v = excl * bs; break;
    case field::shared_sectors: v = shared * bs; break;
    case field::highest_sector: v = (high + 1) * bs - 1; break;
    case field::mapped_bytes: case field::mapped: v = mapped * bs * 512; break;
    case field::exclusive_bytes: case field::exclusive: v = excl * bs * 512; break;
    case field::shared_bytes: case field::shared: v = shared * bs * 512; break;
    case field::highest_byte: case field::highest_mapped: v = (high + 1) * bs * 512 - 1; break;
    case field::transaction: v = r.details.transaction_id; break;
    case field::create_time: v = r.details.creation_time; break;
    case field::snap_time: v = r.details.snapshotted_time; break;
    }
    return is_pretty(f) ? pretty_size(v) : std::to_string(v);
}

std::string format_table(const std::vector<device_row>& rows, const std::vector<field>& fields,
                         std::uint32_t data_block_size, bool headers) {
    if (fields.empty()) return {};
    std::vector<std::vector<std::string>> grid;
    if (headers) {
        grid.emplace_back();
        for (field f : fields) grid.back().push_back(field_name(f));
    }
    for (const auto& r : rows) {
        grid.emplace_back();
        for (field f : fields) grid.back().push_back(cell(r, f, data_block_size));
    }
    std::vector<std::size_t> width(fields.size(), 0);
    for (const auto& row : grid)
        for (std::size_t c = 0; c < row.size(); ++c) width[c] = std::max(width[c], row[c].size());
    std::string out;
    for (const auto& row : grid) {
        for (std::size_t c = 0; c < row.size(); ++c) {
            out.append(width[c] - row[c].size(), ' ');
            out += row[c];
            out += ' ';
        }
        out += '\n';
    }
    return out;
}

std::string format_json(const std::vector<device_row>& rows, const std::vector<field>& fields,
                        std::uint32_t data_block_size) {
    std::string out = "[";
    for (std::size_t i = 0; i < rows.size(); ++i) {
        out += i ? ",\n  {" : "\n  {";
        for (std::size_t c = 0; c < fields.size(); ++c) {
            if (c) out += ", ";
            out += "\"";
            out += field_name(fields[c]);
            out += "\": ";
            std::string v = cell(rows[i], fields[c], data_block_size);
            if (is_pretty(fields[c]))
                out += "\"" + v + "\"";
            else
                out += v;
        }
        out += "}";
    }
    out += rows.empty() ? "]\n" : "\n]\n";
    return out;
}

} // namespace thin::ls
