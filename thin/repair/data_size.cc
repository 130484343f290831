#include "thin/repair/data_size.h"

#include "thin/metadata/mapping.h"

#include "persistent-data/btree/node.h"
#include "persistent-data/space-maps/layout.h"

namespace thin::repair {

using namespace pdata;

namespace {

constexpr std::uint32_t INDEX_LEAF_MAX = btree::max_entries_for(sm::INDEX_VALUE_SIZE);  // 168
constexpr std::uint32_t INTERNAL_MAX = btree::max_entries_for(8);                        // 252
// Deeper than any index tree over 2^40 blocks (67 million bitmaps) can be: a cycle.
constexpr unsigned MAX_INDEX_DEPTH = 16;

std::uint64_t div_up(std::uint64_t a, std::uint64_t b) { return a / b + (a % b != 0); }

// Reads b as a b-tree node; nullopt (and *why) when it is missing or bad.
std::optional<read_ref> read_node(block_manager& bm, block_address b, const char* what, std::string* why) {
    if (b >= bm.nr_blocks()) {
        *why = std::string(what) + " " + std::to_string(b) + " is beyond the end of the metadata device";
        return std::nullopt;
    }
    try {
        return bm.read_lock(b, btree::btree_node_validator());
    } catch (const corrupt_block& e) {
        *why = std::string(what) + " " + std::to_string(b) + ": " + e.problem();
    } catch (const std::exception& e) {
        *why = std::string(what) + " " + std::to_string(b) + ": " + e.what();
    }
    return std::nullopt;
}

} // namespace

std::optional<std::uint64_t> recorded_data_size(block_manager& bm, const sm_root& root, std::string* why) {
    const std::uint64_t nr = root.nr_blocks;
    if (nr > MAX_DATA_BLOCK + 1) {
        *why = "nr_blocks " + std::to_string(nr) + " is above 2^40";
        return std::nullopt;
    }
    if (root.nr_allocated > nr) {
        *why = "nr_allocated " + std::to_string(root.nr_allocated) + " is above nr_blocks " + std::to_string(nr);
        return std::nullopt;
    }
    // The index tree's rightmost path: its last key is the last bitmap's.
    const std::uint64_t nr_bitmaps = div_up(nr, ENTRIES_PER_BITMAP);
    block_address b = root.bitmap_root;
    for (unsigned depth = 0;; ++depth) {
        if (depth == MAX_INDEX_DEPTH) {
            *why = "index tree at " + std::to_string(root.bitmap_root) + " is deeper than any index tree can be";
            return std::nullopt;
        }
        auto r = read_node(bm, b, "index tree node", why);
        if (!r) return std::nullopt;
        btree::node_ref n(r->data());
        const unsigned entries = n.nr_entries();
        const std::string at = "index tree node " + std::to_string(b);
        if (n.is_internal()) {
            if (n.value_size() != 8 || entries == 0) {
                *why = at + " is not an index tree node";
                return std::nullopt;
            }
            if (n.key(entries - 1) >= std::max<std::uint64_t>(nr_bitmaps, 1)) {
                *why = at + " has key " + std::to_string(n.key(entries - 1)) + " for " + std::to_string(nr) +
                       " data blocks (" + std::to_string(nr_bitmaps) + " bitmaps)";
                return std::nullopt;
            }
            b = n.value64(entries - 1);
            continue;
        }
        if (n.value_size() != sm::INDEX_VALUE_SIZE) {
            *why = at + " is not an index tree node";
            return std::nullopt;
        }
        if (entries == 0 && nr_bitmaps == 0 && depth == 0) return nr;
        std::uint64_t last = entries ? n.key(entries - 1) : 0;
        if (entries == 0 || last != nr_bitmaps - 1) {
            *why = at + (entries ? " ends at bitmap " + std::to_string(last) : std::string(" is empty")) + " but " +
                   std::to_string(nr) + " data blocks take " + std::to_string(nr_bitmaps) + " bitmaps";
            return std::nullopt;
        }
        b = sm::index_entry::unpack(n.value(entries - 1)).blocknr;
        break;
    }

    // Counts past nr_blocks in the last bitmap: blocks were in use beyond the recorded end.
    if (b >= bm.nr_blocks()) {
        *why = "last bitmap " + std::to_string(b) + " is beyond the end of the metadata device";
        return std::nullopt;
    }
    try {
        read_ref r = bm.read_lock(b, bitmap_validator());
        const std::uint8_t* words = r.data() + sm::BITMAP_HEADER_SIZE;
        const std::uint64_t used = nr - (nr_bitmaps - 1) * ENTRIES_PER_BITMAP;  // 1 .. 16320
        for (std::uint64_t e = used; e < ENTRIES_PER_BITMAP; ++e) {
            std::uint64_t w = load_le64(words + 8 * (e / sm::ENTRIES_PER_WORD));
            if (sm::entry_get(w, unsigned(e % sm::ENTRIES_PER_WORD))) {
                *why = "last bitmap " + std::to_string(b) + " counts data block " +
                       std::to_string((nr_bitmaps - 1) * ENTRIES_PER_BITMAP + e) + ", past nr_blocks " +
                       std::to_string(nr);
                return std::nullopt;
            }
        }
    } catch (const corrupt_block& e) {
        *why = "last bitmap " + std::to_string(b) + ": " + e.problem();
        return std::nullopt;
    } catch (const std::exception& e) {
        *why = "last bitmap " + std::to_string(b) + ": " + e.what();
        return std::nullopt;
    }
    return nr;
}

std::uint64_t data_space_map_blocks(std::uint64_t nr_data_blocks) {
    const std::uint64_t bitmaps = div_up(nr_data_blocks, ENTRIES_PER_BITMAP);
    std::uint64_t index = 1;
    if (bitmaps > INDEX_LEAF_MAX) {
        std::uint64_t level = div_up(bitmaps, INDEX_LEAF_MAX / 3);
        index = level;
        while (level > INTERNAL_MAX) {
            level = div_up(level, INTERNAL_MAX / 3);
            index += level;
        }
        index += 1;  // the root
    }
    return bitmaps + index + 1;
}

std::uint64_t fixed_output_blocks(std::uint64_t out_blocks) {
    std::uint64_t usable = std::min<std::uint64_t>(out_blocks, sm::MAX_METADATA_BLOCKS);
    return 1 + 1 + div_up(usable, ENTRIES_PER_BITMAP) + 1 + 2;
}

bool output_describes(std::uint64_t nr_data_blocks, std::uint64_t out_blocks) {
    std::uint64_t usable = std::min<std::uint64_t>(out_blocks, sm::MAX_METADATA_BLOCKS);
    return data_space_map_blocks(nr_data_blocks) + fixed_output_blocks(out_blocks) <= usable;
}

} // namespace thin::repair
