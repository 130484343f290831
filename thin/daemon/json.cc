#include "thin/daemon/json.h"

#include <cstdio>

namespace thin::daemon {

std::string json_writer::quote(std::string_view s) {
    std::string out = "\"";
    for (unsigned char c : s) {
        switch (c) {
        case '"': out += "\\\""; break;
        case '\\': out += "\\\\"; break;
        case '\n': out += "\\n"; break;
        case '\r': out += "\\r"; break;
        case '\t': out += "\\t"; break;
        default:
            if (c < 0x20 || c == 0x7f) {
                char buf[8];
                std::snprintf(buf, sizeof buf, "\\u%04x", c);
                out += buf;
            } else {
                out += char(c);  // UTF-8 passes through; invalid bytes are the caller's (paths)
            }
        }
    }
    return out + "\"";
}

void json_writer::item(std::string_view key) {
    if (!first_.empty()) {
        if (!first_.back()) out_ += ",";
        first_.back() = false;
        newline();
    }
    if (!key.empty()) out_ += quote(key) + ": ";
}

json_writer& json_writer::begin_object(std::string_view key) {
    item(key);
    out_ += "{";
    first_.push_back(true);
    return *this;
}

json_writer& json_writer::end_object() {
    bool empty = first_.back();
    first_.pop_back();
    if (!empty) newline();
    out_ += "}";
    return *this;
}

json_writer& json_writer::begin_array(std::string_view key) {
    item(key);
    out_ += "[";
    first_.push_back(true);
    return *this;
}

json_writer& json_writer::end_array() {
    bool empty = first_.back();
    first_.pop_back();
    if (!empty) newline();
    out_ += "]";
    return *this;
}

json_writer& json_writer::value(std::string_view key, std::string_view v) {
    item(key);
    out_ += quote(v);
    return *this;
}

json_writer& json_writer::value(std::string_view key, std::uint64_t v) {
    item(key);
    out_ += std::to_string(v);
    return *this;
}

json_writer& json_writer::value(std::string_view key, bool v) {
    item(key);
    out_ += v ? "true" : "false";
    return *this;
}

json_writer& json_writer::null(std::string_view key) {
    item(key);
    out_ += "null";
    return *this;
}

json_writer& json_writer::value(std::string_view key, const std::optional<std::uint64_t>& v) {
    return v ? value(key, *v) : null(key);
}

json_writer& json_writer::value(std::string_view key, const std::optional<std::string>& v) {
    return v ? value(key, std::string_view(*v)) : null(key);
}

} // namespace thin::daemon
