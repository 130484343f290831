#pragma once
// How thin_check reports what it finds (tools.md §3): section titles ("examining superblock"),
// indented problem lines naming the structure, device and key range, indented details naming the
// block, and a severity lattice none < non-fatal < fatal (format.md §10) that decides the exit code.
#include <cstdint>
#include <optional>
#include <ostream>
#include <string>
#include <vector>

namespace thin::check {

enum class severity { none = 0, non_fatal = 1, fatal = 2 };
const char* to_string(severity s);

// "[begin, end)" or "[begin, -]" for a range open at the top (the reference's notation).
std::string format_range(std::uint64_t begin, std::optional<std::uint64_t> end);

// "<what> (block <b>)", with the stored/wanted checksum detail of pdata's messages dropped (the
// reference names only the block).
std::string at_block(const std::string& what, std::uint64_t b);

class reporter {
public:
    // out == nullptr: quiet (lines are still kept for callers and tests).
    explicit reporter(std::ostream* out = nullptr) : out_(out) {}

    // A stage of the check, printed flush left.
    void section(const std::string& title);
    // A problem (indented two spaces) and its details (four spaces). Raises the worst severity.
    void problem(severity s, const std::string& line, const std::vector<std::string>& details = {});
    // An informational line at problem indentation that does not change the verdict.
    void note(const std::string& line);

    severity worst() const { return worst_; }
    bool has_fatal() const { return worst_ == severity::fatal; }
    const std::vector<std::string>& lines() const { return lines_; }
    std::string text() const;  // every line, newline-terminated

private:
    void emit(const std::string& line);
    std::ostream* out_;
    severity worst_ = severity::none;
    std::vector<std::string> lines_;
};

} // namespace thin::check
