#pragma once
// The size of the data device a repair writes (rules in repair.h): whether the data space map
// root in the superblock can be believed, and whether the output can describe a data device of a
// given size.
#include "persistent-data/block_manager.h"
#include "persistent-data/space_map.h"

#include <cstdint>
#include <optional>
#include <string>

namespace thin::repair {

// The data device size recorded in root (a superblock's data space map root) when the root is
// sane: nr_blocks fits in 40 bits and nr_allocated <= nr_blocks; the index tree's rightmost path is
// good nodes ending at the key of the last bitmap (ceil(nr_blocks / 16320) - 1; an empty leaf for
// 0 blocks); and that bitmap is a good bitmap block with no count past nr_blocks (format.md §4.2,
// §4.5). Otherwise nullopt, and *why says what is wrong. Reads a handful of blocks. The overflow
// tree and the other bitmaps say nothing about the size and are not looked at (repair rebuilds
// the counts anyway).
std::optional<std::uint64_t> recorded_data_size(pdata::block_manager& bm, const pdata::sm_root& root,
                                                std::string* why);

// Metadata blocks a data space map of nr_data_blocks blocks occupies: a bitmap per 16320 blocks
// and an index tree over them, counted with every node below the root only a third full (the
// least a valid tree allows), plus the overflow tree's root.
std::uint64_t data_space_map_blocks(std::uint64_t nr_data_blocks);

// Metadata blocks the freshly formatted output of out_blocks blocks needs besides the data space
// map: superblock, metadata space map index, bitmaps and overflow root, and the two empty trees.
std::uint64_t fixed_output_blocks(std::uint64_t out_blocks);

// Whether an output of out_blocks metadata blocks (the usable part: at most 4,161,600) holds the
// data space map of a data device of nr_data_blocks blocks next to fixed_output_blocks(). The
// mapping trees are not counted: if they do not fit the repair fails while writing (and says so).
bool output_describes(std::uint64_t nr_data_blocks, std::uint64_t out_blocks);

} // namespace thin::repair
