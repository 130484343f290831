#include "thin/check/report.h"

namespace thin::check {

namespace {
// (Built with append: g++ 12 warns falsely (-Wrestrict) about "literal" + std::string.)
std::string indented(std::size_t n, const std::string& line) {
    std::string s(n, ' ');
    s.append(line);
    return s;
}
} // namespace

const char* to_string(severity s) {
    switch (s) {
    case severity::none: return "none";
    case severity::non_fatal: return "non-fatal";
    case severity::fatal: return "fatal";
    }
    return "?";
}

std::string format_range(std::uint64_t begin, std::optional<std::uint64_t> end) {
    std::string s("[");
    s.append(std::to_string(begin)).append(", ");
    if (end) s.append(std::to_string(*end)).append(")");
    else s.append("-]");
    return s;
}

std::string at_block(const std::string& what, std::uint64_t b) {
    std::string w = what;
    if (w.rfind("bad checksum in ", 0) == 0) {
        auto p = w.find(" (stored");
        if (p != std::string::npos) w.resize(p);
    }
    return w + " (block " + std::to_string(b) + ")";
}

void reporter::emit(const std::string& line) {
    lines_.push_back(line);
    if (out_) *out_ << line << '\n';
}

void reporter::section(const std::string& title) {
    emit(title);
    if (out_) out_->flush();
}

void reporter::problem(severity s, const std::string& line, const std::vector<std::string>& details) {
    if (s > worst_) worst_ = s;
    emit(indented(2, line));
    for (auto& d : details) emit(indented(4, d));
}

void reporter::note(const std::string& line) { emit(indented(2, line)); }

std::string reporter::text() const {
    std::string t;
    for (auto& l : lines_) t += l + "\n";
    return t;
}

} // namespace thin::check
