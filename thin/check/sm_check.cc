#include "thin/check/sm_check.h"

#include "thin/check/tree_walk.h"

#include "persistent-data/checksum.h"
#include "persistent-data/endian.h"
#include "persistent-data/io_engine.h"
#include "persistent-data/space-maps/layout.h"

#include <algorithm>

namespace thin::check {

using namespace pdata;

namespace {

constexpr std::size_t BITMAP_BATCH = 64;

std::uint64_t bitmaps_for(std::uint64_t nr_blocks) {
    return (nr_blocks + ENTRIES_PER_BITMAP - 1) / ENTRIES_PER_BITMAP;
}

void count_root(metadata_refs& md, block_address b, const char* name, const char* what, reporter& rep) {
    if (!md.inc(b))
        rep.problem(severity::fatal, std::string(name) + ": " + what + " " + std::to_string(b) +
                                         " is beyond the end of the metadata space map");
}

// The overflow tree: counts >= 3 by block.
void walk_overflow(block_manager& bm, const sm_root& root, const char* name, metadata_refs& md, reporter& rep,
                   space_map_layout& out) {
    count_root(md, root.ref_count_root, name, "reference count tree root", rep);
    tree_walk_callbacks cb;
    out.overflow = overflow_counts(root.nr_blocks);
    cb.value = [&](std::uint64_t key, const std::uint8_t* v) { out.overflow.set(key, load_le32(v)); };
    cb.damage = [&](const btree::key_range& lost, block_address b, const std::string& what) {
        rep.problem(severity::fatal,
                    std::string(name) + ": reference count tree is missing entries " + format_range(lost.begin, lost.end),
                    {at_block(what, b)});
    };
    cb.warning = [&](block_address, const std::string& what) {
        rep.problem(severity::non_fatal, std::string(name) + ": reference count tree: " + what);
    };
    walk_tree(bm, root.ref_count_root, sm::OVERFLOW_VALUE_SIZE, &md, false, cb);
}

// Streams the bitmaps in batches; fn(bitmap index, words) for each readable one.
template <typename Fn>
void for_each_bitmap(block_manager& bm, const space_map_layout& layout, const char* name, reporter& rep, Fn&& fn) {
    auto buf = std::unique_ptr<std::uint8_t[], free_deleter>(
        static_cast<std::uint8_t*>(std::aligned_alloc(MD_BLOCK_SIZE, BITMAP_BATCH * MD_BLOCK_SIZE)));
    if (!buf) throw std::bad_alloc();
    io_engine& engine = bm.engine();
    block_address dev_blocks = bm.nr_blocks();
    std::size_t n = layout.bitmaps.size();
    for (std::size_t begin = 0; begin < n; begin += BITMAP_BATCH) {
        std::size_t end = std::min(n, begin + BITMAP_BATCH);
        std::vector<io_request> reqs;
        std::vector<std::size_t> which;
        std::vector<std::string> errors(end - begin);
        for (std::size_t i = begin; i < end; ++i) {
            block_address b = layout.bitmaps[i];
            if (b == sm::NO_BLOCK) continue;
            if (b >= dev_blocks) {
                errors[i - begin] = "beyond the end of the metadata device";
                continue;
            }
            reqs.push_back({b, buf.get() + (i - begin) * MD_BLOCK_SIZE});
            which.push_back(i);
        }
        try {
            engine.read_many(reqs);
        } catch (const io_error&) {
            for (std::size_t r = 0; r < reqs.size(); ++r) {
                try {
                    engine.read(reqs[r].block, reqs[r].buf);
                } catch (const io_error& e) {
                    errors[which[r] - begin] = e.what();
                }
            }
        }
        for (std::size_t i = begin; i < end; ++i) {
            block_address b = layout.bitmaps[i];
            if (b == sm::NO_BLOCK) continue;
            const std::uint8_t* d = buf.get() + (i - begin) * MD_BLOCK_SIZE;
            std::string& err = errors[i - begin];
            if (err.empty() && load_le64(d + 8) != b) err = "bitmap claims to be block " + std::to_string(load_le64(d + 8));
            if (err.empty() && load_le32(d) != block_checksum(d, block_salt::bitmap)) err = "bad checksum in space map bitmap";
            if (!err.empty()) {
                rep.problem(severity::fatal, std::string(name) + ": bitmap " + std::to_string(i) + " is unreadable",
                            {at_block(err, b)});
                continue;
            }
            fn(i, d + sm::BITMAP_HEADER_SIZE);
        }
    }
}

// Expected(b) -> u32 recount. Fast(first, word&) -> the expected bitmap word of 32 blocks when it
// can tell cheaply (all counts below 3), so matching words need no per-entry work.
template <typename Expected, typename Fast>
void compare(block_manager& bm, const space_map_layout& layout, std::uint64_t nr_blocks, const char* name,
             Expected&& expected, Fast&& fast, difference_list& out, reporter& rep) {
    std::uint64_t missing_overflow = 0;
    block_address first_missing = 0;
    for_each_bitmap(bm, layout, name, rep, [&](std::size_t i, const std::uint8_t* words) {
        std::uint64_t base = std::uint64_t(i) * ENTRIES_PER_BITMAP;
        std::uint64_t limit = std::min<std::uint64_t>(ENTRIES_PER_BITMAP, nr_blocks - std::min(nr_blocks, base));
        for (std::uint64_t w = 0; w * sm::ENTRIES_PER_WORD < limit; ++w) {
            std::uint64_t word = load_le64(words + 8 * w);
            std::uint64_t first = base + w * sm::ENTRIES_PER_WORD;
            unsigned nr = static_cast<unsigned>(std::min<std::uint64_t>(sm::ENTRIES_PER_WORD, limit - w * sm::ENTRIES_PER_WORD));
            std::uint64_t want_word;
            if (nr == sm::ENTRIES_PER_WORD && fast(first, want_word) && want_word == word) continue;
            for (unsigned k = 0; k < nr; ++k) {
                std::uint32_t actual = sm::entry_get(word, k);
                block_address b = first + k;
                std::uint32_t want = expected(b);
                if (actual == 3 && !layout.overflow.find(b, actual)) {
                    if (!missing_overflow++) first_missing = b;
                    continue;
                }
                if (actual != want) out.add(b, want, actual);
            }
        }
    });
    if (missing_overflow)
        rep.problem(severity::fatal, std::string(name) + ": " + std::to_string(missing_overflow) +
                                         " bitmap entries say the count is in the reference count tree, which has no entry for them (first: block " +
                                         std::to_string(first_missing) + ")");
}

} // namespace

static_assert(overflow_counts::REGION == ENTRIES_PER_BITMAP);

overflow_counts::overflow_counts(std::uint64_t nr_blocks) : nr_blocks_(nr_blocks) {}

void overflow_counts::set(std::uint64_t b, std::uint32_t count) {
    if (b >= nr_blocks_) {
        if (big_.insert_or_assign(b, count).second) ++size_;
        return;
    }
    std::uint64_t r = b / REGION, i = b % REGION;
    if (r >= regions_.size()) regions_.resize(r + 1);
    region& reg = regions_[r];
    if (!reg.nibbles) reg.nibbles.reset(new std::uint8_t[REGION / 2]());
    unsigned old = (reg.nibbles[i >> 1] >> (unsigned(i & 1) << 2)) & 0xf;
    if (old == 0) ++size_;
    if (old == ESCAPED) {  // forget the old value
        if (!reg.bytes || reg.bytes[i] == 0xff) big_.erase(b);
        if (reg.bytes) reg.bytes[i] = 0xff;
        --reg.nr_escaped;
    }
    if (count >= 3 && count < 2 + ESCAPED) {
        set_nibble(reg, i, count - 2);
        return;
    }
    set_nibble(reg, i, ESCAPED);
    ++reg.nr_escaped;
    if (!reg.bytes && reg.nr_escaped > BYTES_AFTER && count >= 2 + ESCAPED) give_bytes(reg, r);
    if (reg.bytes && count >= 2 + ESCAPED && count - 2 - ESCAPED < 0xff) reg.bytes[i] = std::uint8_t(count - 2 - ESCAPED);
    else big_[b] = count;
}

// Moves the region's escaped counts that fit a byte out of the hash table.
void overflow_counts::give_bytes(region& reg, std::uint64_t r) {
    reg.bytes.reset(new std::uint8_t[REGION]);
    std::fill_n(reg.bytes.get(), REGION, std::uint8_t(0xff));
    std::uint64_t base = r * REGION;
    for (std::uint64_t i = 0; i < REGION; ++i) {
        if (((reg.nibbles[i >> 1] >> (unsigned(i & 1) << 2)) & 0xf) != ESCAPED) continue;
        auto it = big_.find(base + i);
        if (it == big_.end()) continue;
        std::uint32_t c = it->second;
        if (c >= 2 + ESCAPED && c - 2 - ESCAPED < 0xff) {
            reg.bytes[i] = std::uint8_t(c - 2 - ESCAPED);
            big_.erase(it);
        }
    }
}

void difference_list::add(block_address b, std::uint32_t expected, std::uint32_t actual) {
    ++nr_blocks_;
    if (!ranges_.empty()) {
        auto& last = ranges_.back();
        if (last.end == b && last.expected == expected && last.actual == actual) {
            ++last.end;
            return;
        }
    }
    ranges_.push_back({b, b + 1, expected, actual});
}

space_map_layout walk_metadata_space_map(block_manager& bm, const sm_root& root, metadata_refs& md, reporter& rep) {
    const char* name = "metadata space map";
    space_map_layout out;
    std::uint64_t nr_bitmaps = bitmaps_for(root.nr_blocks);
    count_root(md, root.bitmap_root, name, "index block", rep);
    if (nr_bitmaps > sm::MAX_METADATA_BITMAPS) {
        rep.problem(severity::fatal, std::string(name) + ": " + std::to_string(root.nr_blocks) +
                                         " blocks need more bitmaps than one index block holds");
    } else {
        try {
            read_ref idx = bm.read_lock(root.bitmap_root, index_validator());
            for (std::uint64_t i = 0; i < nr_bitmaps; ++i) {
                auto e = sm::index_entry::unpack(idx.data() + sm::INDEX_BLOCK_HEADER_SIZE + sm::INDEX_ENTRY_SIZE * i);
                out.bitmaps.push_back(e.blocknr);
                count_root(md, e.blocknr, name, "bitmap block", rep);
            }
            out.usable = true;
        } catch (const std::exception& e) {
            const auto* cb = dynamic_cast<const corrupt_block*>(&e);
            rep.problem(severity::fatal, std::string(name) + ": the index block is unreadable",
                        {cb ? at_block(cb->problem(), root.bitmap_root) : std::string(e.what())});
        }
    }
    walk_overflow(bm, root, name, md, rep, out);
    return out;
}

space_map_layout walk_data_space_map(block_manager& bm, const sm_root& root, metadata_refs& md, reporter& rep) {
    const char* name = "data space map";
    space_map_layout out;
    std::uint64_t nr_bitmaps = bitmaps_for(root.nr_blocks);
    count_root(md, root.bitmap_root, name, "index tree root", rep);
    out.bitmaps.assign(nr_bitmaps, sm::NO_BLOCK);
    bool damaged = false;
    std::uint64_t beyond = 0;
    tree_walk_callbacks cb;
    cb.value = [&](std::uint64_t key, const std::uint8_t* v) {
        auto e = sm::index_entry::unpack(v);
        count_root(md, e.blocknr, name, "bitmap block", rep);
        if (key < nr_bitmaps) out.bitmaps[key] = e.blocknr;
        else ++beyond;
    };
    cb.damage = [&](const btree::key_range& lost, block_address b, const std::string& what) {
        damaged = true;
        rep.problem(severity::fatal, std::string(name) + ": index tree is missing bitmaps " + format_range(lost.begin, lost.end),
                    {at_block(what, b)});
    };
    cb.warning = [&](block_address, const std::string& what) {
        rep.problem(severity::non_fatal, std::string(name) + ": index tree: " + what);
    };
    walk_tree(bm, root.bitmap_root, sm::INDEX_VALUE_SIZE, &md, false, cb);
    if (beyond)
        rep.problem(severity::fatal, std::string(name) + ": index tree has " + std::to_string(beyond) +
                                         " entries beyond bitmap " + std::to_string(nr_bitmaps) + " (the map has " +
                                         std::to_string(root.nr_blocks) + " blocks)");
    std::uint64_t missing = std::count(out.bitmaps.begin(), out.bitmaps.end(), sm::NO_BLOCK);
    if (missing && !damaged)
        rep.problem(severity::fatal, std::string(name) + ": index tree has no entry for " + std::to_string(missing) +
                                         " of its " + std::to_string(nr_bitmaps) + " bitmaps");
    out.usable = true;
    walk_overflow(bm, root, name, md, rep, out);
    return out;
}

void compare_metadata_counts(block_manager& bm, const space_map_layout& layout, std::uint64_t nr_blocks,
                             const metadata_refs& expected, difference_list& out, reporter& rep) {
    std::uint64_t limit = std::min<std::uint64_t>(nr_blocks, expected.nr_blocks());
    compare(
        bm, layout, limit, "metadata space map", [&](block_address b) { return expected.get(b); },
        [](std::uint64_t, std::uint64_t&) { return false; }, out, rep);
}

void compare_data_counts(block_manager& bm, const space_map_layout& layout, std::uint64_t nr_blocks,
                         const data_counts& expected, difference_list& out, reporter& rep) {
    std::uint64_t limit = std::min<std::uint64_t>(nr_blocks, expected.nr_blocks());
    compare(
        bm, layout, limit, "data space map", [&](block_address b) { return expected.get(b); },
        [&](std::uint64_t first, std::uint64_t& word) { return expected.bitmap_word(first, word); }, out, rep);
}

} // namespace thin::check
