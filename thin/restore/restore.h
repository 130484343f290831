#pragma once
// thin_restore as library code (tools.md §5): XML file → binary metadata on an output device or
// file, through the streaming parser and the restore emitter. A failed restore leaves the output
// with a zeroed superblock (block 0), so it is never mistaken for valid metadata.
#include "thin/restore/restore_emitter.h"
#include "thin/restore/xml_parser.h"

namespace thin::restore {

// Restores the XML at xml_path into output. On failure zeroes block 0 of output and rethrows.
void restore_xml_file(const std::string& xml_path, std::shared_ptr<pdata::io_engine> output,
                      const restore_options& opts, const progress_fn& progress = {}, const parse_options& po = {});

// The same from XML held in memory (tests).
void restore_xml(std::string_view xml, std::shared_ptr<pdata::io_engine> output, const restore_options& opts,
                 const parse_options& po = {});

} // namespace thin::restore
