#pragma once
// Repair (tools.md §4 thin_dump --repair, §6 thin_repair): a damage-tolerant source of emitter
// events (thin/ir/emitter.h) from broken metadata. thin_repair feeds them to the restore emitter,
// thin_dump --repair to a text emitter. The input is only read.
//
// Which trees are used (the first rule that applies):
//  1. the superblock (block 0) is good and its device-details tree and level-1 mapping tree are
//     consistent: both walk without damage, each device's level-2 root is a good node, and both
//     trees hold the same devices;
//  2. the metadata snapshot named by the good superblock is consistent in the same sense;
//  3. otherwise every metadata block is scanned (thin/repair/scan.h) and every candidate details
//     root and level-1 root (from block 0, the snapshot copy, other superblock copies found, and
//     unreferenced tree roots found) is evaluated; the pair holding the most devices in common
//     wins; ties go to fewer damaged parts, then to roots of block 0's superblock, then to the
//     most recent-looking trees: details with the highest device transaction ids and snapshot
//     times, then the highest block numbers (the allocator moves forwards). Superblock copies get
//     no other preference: they are metadata snapshots, older than the live trees the scan finds.
// Devices present in both chosen trees are emitted, in dev_id order; a device whose level-2 root
// is unreadable, or whose id is above the kernel's 2^24-1, is dropped (and reported). Damage below
// a level-2 root loses only the key range of the bad node (pdata::btree::walk).
//
// Superblock values:
//  - block 0 good: transaction id, time and data block size from it, nr_data_blocks from its data
//    space map root; --transaction-id, --data-block-size, --nr-data-blocks override them;
//  - block 0 unreadable (checksum, self-location or magic): --transaction-id, --data-block-size
//    and --nr-data-blocks must all be given (missing_fields), time = the highest time found in the
//    recovered details and mappings;
//  - flags 0 (needs_check cleared), version 2, no metadata snapshot.
// The data device size (nr_data_blocks) and mappings beyond it (data_size.h): a mapping to a data
// block >= nr_data_blocks points past the end of the data device; it is damage and is dropped
// (one report line per device, with the count and the highest such block).
//  - --nr-data-blocks given: the user's value stands;
//  - else, when the superblock's data space map root is sane (data_size.h recorded_data_size:
//    nr_blocks within 40 bits, index tree and last bitmap consistent with it): the size it records;
//  - else (the data space map is damaged): the size it records when every mapping is below it,
//    otherwise the highest mapped data block + 1 - the smallest size keeping every recovered
//    mapping, safe because the kernel grows the data space map to the data device's size when the
//    pool is activated (pool.md §6), while a value above the real size would make activation fail.
// thin_repair also requires the data space map of that size to fit in the output next to the
// space maps' fixed blocks (a bitmap per 16320 data blocks plus its index, format.md §4.5); if it
// does not, repair_error is thrown before anything is written, naming --nr-data-blocks when the
// size came from the mappings. So a mapping to data block 2^40-1 never makes it build a data
// space map of 2^40 blocks. thin_dump --repair has no output to fit and takes the size as is.
// Each device's mapped_blocks is the number of mappings actually emitted.
#include "thin/ir/emitter.h"

#include "persistent-data/block_manager.h"
#include "persistent-data/io_engine.h"

#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>

namespace thin::repair {

struct repair_options {
    std::optional<std::uint64_t> transaction_id;
    std::optional<std::uint32_t> data_block_size;
    std::optional<std::uint64_t> nr_data_blocks;
    // One line per thing lost or chosen (damage, dropped devices, which trees were used). Empty:
    // nothing is reported.
    std::function<void(const std::string&)> report;
    // Mappings emitted so far and in total, now and then while emitting.
    std::function<void(std::uint64_t done, std::uint64_t total)> progress;
};

// Block 0 is unreadable and these values were not given. what() holds one line per field:
// "The following field needs to be provided on the command line due to corruption in the
// superblock: transaction id" (the reference's wording; also "data block size", "nr data blocks").
class missing_fields : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

// Any other reason the repair cannot go on (bad override values, unreadable device, a data device
// the output cannot describe). what() is one line.
class repair_error : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

// What was recovered (for reports and tests).
struct repair_summary {
    bool superblock_ok = false;
    std::string source;  // "superblock", "metadata snapshot (block N)", "scan"
    pdata::block_address details_root = 0;
    pdata::block_address mapping_root = 0;
    std::uint64_t devices = 0;
    std::uint64_t mappings = 0;
    std::uint64_t dropped_devices = 0;   // in one tree only, bad level-2 root, or bad id
    std::uint64_t lost_ranges = 0;       // damaged nodes below level-2 roots
    std::uint64_t dropped_mappings = 0;  // to data blocks beyond the data device (see above)
};

// thin_dump --repair: emits the best pool recoverable from bm (a whole event stream:
// begin_superblock ... end_superblock). Throws missing_fields / repair_error before emitting
// anything; exceptions from the emitter propagate.
repair_summary repair_dump(pdata::block_manager& bm, const repair_options& opts, emitter& out);

// thin_repair: the same into freshly built metadata on output (through the restore emitter). The
// output is written only once the repair source is ready; if anything fails after that, block 0 of
// the output is zeroed so it never looks valid, and the error is rethrown.
repair_summary repair_metadata(pdata::block_manager& input, std::shared_ptr<pdata::io_engine> output,
                               const repair_options& opts);

} // namespace thin::repair
