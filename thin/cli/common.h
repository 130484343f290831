#pragma once
// What every offline tool shares: the checks on an input before it is opened (so bad input gets one
// clear line naming the file), the output-file requirements of restore/repair, exit codes
// (tools.md §1: 0 success, 1 any failure) and the top-level exception handler.
#include "persistent-data/io_engine.h"

#include <functional>
#include <memory>
#include <stdexcept>
#include <string>

namespace thin::cli {

constexpr int EXIT_OK = 0;
constexpr int EXIT_FAIL = 1;

// The version every tool prints for -V/--version.
std::string version();

// An error to report as one line (no "error:" prefix added) with exit status 1.
class tool_error : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

enum class input_kind { metadata, xml, empty, too_small, all_zeros, unknown };

// Sniffs an input without opening it as metadata. Throws tool_error when it cannot be read.
input_kind classify_input(const std::string& path);

// Throws tool_error with a message naming path unless it looks like dm-thin binary metadata:
// "<path>: this looks like XML; <tool> works on binary metadata", "... is too small ...", "... is
// all zeros (not formatted) ...", "... is not dm-thin metadata (bad superblock magic)".
// With allow_bad_superblock, only XML / empty / too small are refused (repair, check report the
// rest themselves).
void require_binary_metadata(const std::string& tool, const std::string& path, bool allow_bad_superblock = false);

// Opens a metadata device or file. Block devices are opened O_EXCL (refusing metadata an active
// pool holds) unless shared is set (-m: reading the metadata snapshot of a live pool).
std::shared_ptr<pdata::io_engine> open_input(const std::string& path, bool shared = false, bool writable = false);

// thin_restore / thin_repair output requirements (tools.md §5): must exist; a regular file must be
// at least 32 KiB. Throws tool_error with the reference's explanation.
void require_output(const std::string& path);
std::shared_ptr<pdata::io_engine> open_output(const std::string& path);

// Runs body, turning exceptions into a message on stderr prefixed by the tool name (unless quiet)
// and exit status 1.
int run(const std::string& tool, bool quiet, const std::function<int()>& body);

} // namespace thin::cli
