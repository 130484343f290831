#include "thin/restore/restore.h"

#include <functional>

namespace thin::restore {

namespace {

void zero_superblock(pdata::io_engine& output) {
    pdata::aligned_block zero = pdata::make_aligned_block(true);
    output.write(0, zero.get());
    output.flush();
}

void guarded_restore(const std::shared_ptr<pdata::io_engine>& output, const restore_options& opts,
                     const std::function<void(restore_emitter&)>& parse) {
    restore_emitter e(output, opts);
    try {
        parse(e);
        if (!e.committed()) throw std::runtime_error("the XML holds no <superblock>");
    } catch (...) {
        e.abandon();
        try {
            zero_superblock(*output);
        } catch (...) {
            // The original error is the one to report.
        }
        throw;
    }
}

} // namespace

void restore_xml_file(const std::string& xml_path, std::shared_ptr<pdata::io_engine> output,
                      const restore_options& opts, const progress_fn& progress, const parse_options& po) {
    guarded_restore(output, opts, [&](restore_emitter& e) { parse_xml_file(xml_path, e, progress, po); });
}

void restore_xml(std::string_view xml, std::shared_ptr<pdata::io_engine> output, const restore_options& opts,
                 const parse_options& po) {
    guarded_restore(output, opts, [&](restore_emitter& e) { parse_xml(xml, e, "<string>", po); });
}

} // namespace thin::restore
