#pragma once
// The thin metadata XML (tools.md §2.1) parsed as a stream with Expat into emitter IR events:
// never a DOM, the input is read in 1 MiB pieces and every mapping element becomes a range_map
// event, so memory stays flat however large the input is.
//
// Two stages (event_pipe.h): Expat runs on the calling thread and turns elements into compact
// events in fixed-size batches; a second thread applies them to the emitter in document order.
// A regular file is read by a third thread, one piece ahead of Expat (read_ahead.h).
// The emitter is called from that thread only, and never after the parse function returns. The
// first error in document order is the one thrown, whichever stage finds it, and both stages
// have stopped by then.
//
// Accepted: <superblock> at the root, <device> inside it, <single_mapping>/<range_mapping> inside
// devices; attribute order is free, unknown attributes are ignored (as thin_restore 0.9.0 does).
// Refused, with an xml_error naming the line and column: malformed or truncated XML, unknown
// elements (including thin_dump 1.x's <def>/<ref>), elements in the wrong place, missing or
// non-numeric attributes, values out of range, and anything the emitter throws (the position is
// that of the element being handled).
#include "thin/ir/emitter.h"

#include <cstddef>
#include <cstdint>
#include <functional>
#include <stdexcept>
#include <string>
#include <string_view>

namespace thin::restore {

class xml_error : public std::runtime_error {
public:
    xml_error(const std::string& source, std::uint64_t line, std::uint64_t column, const std::string& problem)
        : std::runtime_error(source + ": line " + std::to_string(line) + ", column " + std::to_string(column) +
                             ": " + problem),
          line_(line), column_(column), problem_(problem) {}
    std::uint64_t line() const { return line_; }
    std::uint64_t column() const { return column_; }  // 1-based
    const std::string& problem() const { return problem_; }

private:
    std::uint64_t line_, column_;
    std::string problem_;
};

// Called now and then with the bytes parsed so far.
using progress_fn = std::function<void(std::uint64_t done)>;

struct parse_options {
    // The size of the ring between the stages: batches x events_per_batch x 48 bytes.
    std::size_t batches = 4;
    std::size_t events_per_batch = 4096;
    // parse_xml_file: read a regular file on a third thread, one 1 MiB piece ahead (read_ahead.h).
    bool read_ahead = true;
};

// Parses the file at path. Throws xml_error, or std::runtime_error when the file cannot be read.
void parse_xml_file(const std::string& path, emitter& out, const progress_fn& progress = {},
                    const parse_options& po = {});

// Parses a document held in memory; source names it in messages.
void parse_xml(std::string_view text, emitter& out, const std::string& source = "<string>",
               const parse_options& po = {});

} // namespace thin::restore
