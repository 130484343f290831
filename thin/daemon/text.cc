#include "thin/daemon/text.h"

#include <cctype>
#include <charconv>
#include <cstdio>
#include <ctime>

namespace thin::daemon {

namespace {

bool iequals(std::string_view a, std::string_view b) {
    if (a.size() != b.size()) return false;
    for (std::size_t i = 0; i < a.size(); ++i)
        if (std::tolower(static_cast<unsigned char>(a[i])) != std::tolower(static_cast<unsigned char>(b[i])))
            return false;
    return true;
}

int suffix_shift(std::string_view s) {
    if (s.empty() || iequals(s, "B")) return 0;
    static const char* const units[] = {"K", "M", "G", "T"};
    for (int i = 0; i < 4; ++i) {
        std::string u = units[i];
        if (iequals(s, u) || iequals(s, u + "iB") || iequals(s, u + "B")) return 10 * (i + 1);
    }
    return -1;
}

bool word_char_plain(unsigned char c) {
    return std::isalnum(c) || c == '.' || c == '_' || c == '/' || c == ':' || c == '=' || c == ',' || c == '+' ||
           c == '@' || c == '~' || c == '-';
}

int hex_value(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

} // namespace

std::uint64_t parse_u64(std::string_view text, const std::string& what) {
    std::uint64_t v = 0;
    auto [p, ec] = std::from_chars(text.data(), text.data() + text.size(), v, 10);
    if (text.empty() || ec != std::errc() || p != text.data() + text.size())
        throw parse_error("invalid " + what + " '" + std::string(text) + "': expected a decimal number");
    return v;
}

std::uint64_t parse_size(std::string_view text, const std::string& what, std::uint64_t multiple_of) {
    const std::string shown(text);
    std::size_t digits = 0;
    while (digits < text.size() && std::isdigit(static_cast<unsigned char>(text[digits]))) ++digits;
    int shift = suffix_shift(text.substr(digits));
    if (digits == 0 || shift < 0)
        throw parse_error("invalid " + what + " '" + shown + "': expected bytes or a number with K, M, G or T");
    std::uint64_t n = 0;
    auto [p, ec] = std::from_chars(text.data(), text.data() + digits, n, 10);
    if (ec != std::errc() || (shift && n > (UINT64_MAX >> shift)))
        throw parse_error("invalid " + what + " '" + shown + "': too large");
    n <<= shift;
    if (multiple_of && n % multiple_of)
        throw parse_error("invalid " + what + " '" + shown + "': must be a multiple of " + std::to_string(multiple_of) +
                          " bytes");
    return n;
}

std::string human_size(std::uint64_t bytes) {
    static const char* const units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
    int u = 0;
    double v = double(bytes);
    while (v >= 1024 && u < 6) {
        v /= 1024;
        ++u;
    }
    char buf[32];
    if (u == 0 || v == double(std::uint64_t(v)))
        std::snprintf(buf, sizeof buf, "%llu %s", static_cast<unsigned long long>(v), units[u]);
    else
        std::snprintf(buf, sizeof buf, "%.1f %s", v, units[u]);
    return buf;
}

bool valid_volume_name(std::string_view name) {
    if (name.empty() || name.size() > 64 || name[0] == '-' || name[0] == '.') return false;
    for (char c : name)
        if (!std::isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '_' && c != '-') return false;
    return true;
}

void check_volume_name(std::string_view name) {
    if (!valid_volume_name(name))
        throw parse_error("invalid volume name '" + encode_word(name) +
                          "': use 1 to 64 of A-Z a-z 0-9 . _ -, not starting with '-' or '.'");
}

std::string encode_word(std::string_view w) {
    static const char hex[] = "0123456789ABCDEF";
    std::string out;
    for (unsigned char c : w) {
        if (word_char_plain(c)) {
            out += char(c);
        } else {
            out += '%';
            out += hex[c >> 4];
            out += hex[c & 15];
        }
    }
    return out;
}

std::string decode_word(std::string_view w) {
    std::string out;
    for (std::size_t i = 0; i < w.size(); ++i) {
        unsigned char c = w[i];
        if (c == '%') {
            if (i + 2 >= w.size()) throw parse_error("bad %-escape in '" + std::string(w) + "'");
            int a = hex_value(w[i + 1]), b = hex_value(w[i + 2]);
            if (a < 0 || b < 0) throw parse_error("bad %-escape in '" + std::string(w) + "'");
            out += char(a * 16 + b);
            i += 2;
        } else if (word_char_plain(c)) {
            out += char(c);
        } else {
            throw parse_error("unexpected character in a request word (code " + std::to_string(c) + ")");
        }
    }
    if (out.empty()) throw parse_error("empty word");
    return out;
}

std::vector<std::string> decode_words(std::string_view line) {
    std::vector<std::string> words;
    std::size_t i = 0;
    while (i <= line.size()) {
        std::size_t j = line.find(' ', i);
        if (j == std::string_view::npos) j = line.size();
        words.push_back(decode_word(line.substr(i, j - i)));
        i = j + 1;
    }
    return words;
}

std::string encode_words(const std::vector<std::string>& words) {
    std::string out;
    for (const auto& w : words) {
        if (!out.empty()) out += ' ';
        out += encode_word(w);
    }
    return out;
}

std::string iso_time(std::int64_t unix_seconds) {
    std::time_t t = static_cast<std::time_t>(unix_seconds);
    std::tm tm{};
    gmtime_r(&t, &tm);
    char buf[32];
    std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
    return buf;
}

std::int64_t parse_iso_time(std::string_view text) {
    std::string s(text);
    std::tm tm{};
    const char* end = ::strptime(s.c_str(), "%Y-%m-%dT%H:%M:%SZ", &tm);
    if (!end || *end) throw parse_error("invalid time '" + s + "': expected YYYY-MM-DDTHH:MM:SSZ");
    return static_cast<std::int64_t>(::timegm(&tm));
}

std::string log_timestamp(std::chrono::system_clock::time_point t) {
    auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(t.time_since_epoch()).count();
    std::string s = iso_time(ms / 1000);
    char frac[8];
    std::snprintf(frac, sizeof frac, ".%03d", int(ms % 1000));
    s.insert(s.size() - 1, frac);
    return s;
}

} // namespace thin::daemon
