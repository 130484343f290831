// A whole metadata image (up to 64 blocks, records of fuzz_blocks.h) on a memory engine, through
// thin_check, thin_dump (live trees and metadata snapshot), thin_dump --repair and thin_repair
// into a second memory engine, all in process. Damaged metadata must give reports or exceptions
// derived from std::exception, never a crash, a hang or a sanitizer report.
#include "fuzz/fuzz_blocks.h"

#include "thin/check/check.h"
#include "thin/dump/dump.h"
#include "thin/emit/xml_emitter.h"
#include "thin/repair/repair.h"

#include <exception>
#include <sstream>

namespace {

constexpr std::size_t MAX_BLOCKS = 64;
// Room for thin_repair's output: its space maps and trees for what 64 input blocks can describe.
constexpr pdata::block_address REPAIR_OUTPUT_BLOCKS = 256;

std::shared_ptr<pdata::memory_engine> engine_from(const std::vector<std::uint8_t>& blocks) {
    auto e = std::make_shared<pdata::memory_engine>(blocks.size() / fuzz::BLOCK);
    for (std::size_t b = 0; b * fuzz::BLOCK < blocks.size(); ++b)
        e->write(b, blocks.data() + b * fuzz::BLOCK);
    return e;
}

void run_check(std::shared_ptr<pdata::io_engine> e, bool snap) {
    thin::check::check_options o;
    o.threads = 1;
    o.use_metadata_snap = snap;
    thin::check::reporter rep;
    try {
        thin::check::check_metadata(e, o, rep);
    } catch (const std::exception&) {
    }
}

void run_dump(std::shared_ptr<pdata::io_engine> e, bool snap) {
    pdata::block_manager bm(e, 256);
    std::ostringstream out;
    thin::emit::xml_emitter x(out);
    thin::dump::dump_options o;
    o.metadata_snap = snap;
    try {
        thin::dump::dump_metadata(bm, o, x);
        x.flush();
    } catch (const std::exception&) {
    }
}

void run_repair(std::shared_ptr<pdata::io_engine> e) {
    pdata::block_manager bm(e, 256);
    thin::repair::repair_options o;
    // Without these a bad superblock stops repair before it scans; with them the scan runs.
    o.transaction_id = 1;
    o.data_block_size = 128;
    o.nr_data_blocks = 1024;
    try {
        std::ostringstream out;
        thin::emit::xml_emitter x(out);
        thin::repair::repair_dump(bm, o, x);
    } catch (const std::exception&) {
    }
    try {
        auto output = std::make_shared<pdata::memory_engine>(REPAIR_OUTPUT_BLOCKS);
        thin::repair::repair_metadata(bm, output, {});
    } catch (const std::exception&) {
    }
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    auto blocks = fuzz::blocks_from(data, size, MAX_BLOCKS);
    std::shared_ptr<pdata::io_engine> e = engine_from(blocks);
    run_check(e, false);
    run_check(e, true);
    run_dump(e, false);
    run_dump(e, true);
    run_repair(e);
    return 0;
}
