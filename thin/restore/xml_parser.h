#pragma once
// The thin metadata XML (tools.md §2.1) parsed as a stream with Expat into emitter IR events:
// never a DOM, the input is read in 1 MiB pieces and every mapping element becomes a range_map
// call at once, so memory stays flat however large the input is.
//
// Accepted: <superblock> at the root, <device> inside it, <single_mapping>/<range_mapping> inside
// devices; attribute order is free, unknown attributes are ignored (as thin_restore 0.9.0 does).
// Refused, with an xml_error naming the line and column: malformed or truncated XML, unknown
// elements (including thin_dump 1.x's <def>/<ref>), elements in the wrong place, missing or
// non-numeric attributes, values out of range, and anything the emitter throws (the position is
// that of the element being handled).
#include "thin/ir/emitter.h"

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

// Parses the file at path. Throws xml_error, or std::runtime_error when the file cannot be read.
void parse_xml_file(const std::string& path, emitter& out, const progress_fn& progress = {});

// Parses a document held in memory; source names it in messages.
void parse_xml(std::string_view text, emitter& out, const std::string& source = "<string>");

} // namespace thin::restore
