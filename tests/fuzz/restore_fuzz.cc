// XML through thin_restore's library path (streaming Expat parser, event pipe, restore emitter)
// into a memory engine. Bad XML and impossible pools must be refused with an exception derived
// from std::exception; a restore that succeeds must leave metadata thin_check finds clean.
#include "thin/check/check.h"
#include "thin/restore/restore.h"

#include <cstdint>
#include <exception>
#include <string_view>

namespace {
// Small enough to format quickly on every input; big enough for pools of a few devices.
constexpr pdata::block_address OUTPUT_BLOCKS = 256;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    auto output = std::make_shared<pdata::memory_engine>(OUTPUT_BLOCKS);
    thin::restore::restore_options o;
    o.cache_blocks = 64;
    // Small batches so the two stages of the parser hand over often.
    thin::restore::parse_options po;
    po.batches = 2;
    po.events_per_batch = 8;
    try {
        thin::restore::restore_xml(std::string_view(reinterpret_cast<const char*>(data), size), output, o, po);
    } catch (const std::exception&) {
        return 0;
    }
    thin::check::check_options co;
    co.threads = 1;
    thin::check::reporter rep;
    auto r = thin::check::check_metadata(output, co, rep);
    if (r.worst == thin::check::severity::fatal) {
        std::fprintf(stderr, "restored metadata fails thin_check:\n%s", rep.text().c_str());
        __builtin_trap();
    }
    return 0;
}
