#pragma once
// The two fixes thin_check may make (tools.md §3): --auto-repair sets the stored count of every
// block nothing refers to back to 0 in both space maps and commits the maps the normal way (space
// maps, every block but the superblock, flush, superblock, flush; format.md §8.1), clearing
// NEEDS_CHECK in the same superblock write; --clear-needs-check-flag rewrites only the superblock.
#include "thin/check/sm_check.h"

#include "persistent-data/io_engine.h"

#include <memory>

namespace thin::check {

// Sets to 0 the counts of every repairable() range of both lists, then commits. The engine must
// be writable. Throws on failure (the previous state stays intact: nothing it references is
// overwritten before the new superblock).
void repair_leaks(std::shared_ptr<pdata::io_engine> engine, const difference_list& metadata,
                  const difference_list& data);

// Clears NEEDS_CHECK in block 0 (re-stamping its checksum) when set; says whether it was set.
bool clear_needs_check(pdata::io_engine& engine);

} // namespace thin::check
