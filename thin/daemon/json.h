#pragma once
// A small JSON writer for `list --json` and `status --json` (no JSON library is allowed; thin/'s
// emitters write their own fixed shapes and have no general writer to share). Keys and values in
// call order, two-space indentation, strings escaped per RFC 8259.
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace thin::daemon {

class json_writer {
public:
    json_writer& begin_object(std::string_view key = {});
    json_writer& end_object();
    json_writer& begin_array(std::string_view key = {});
    json_writer& end_array();
    json_writer& value(std::string_view key, std::string_view v);
    json_writer& value(std::string_view key, const char* v) { return value(key, std::string_view(v)); }
    json_writer& value(std::string_view key, const std::string& v) { return value(key, std::string_view(v)); }
    json_writer& value(std::string_view key, std::uint64_t v);
    json_writer& value(std::string_view key, bool v);
    json_writer& null(std::string_view key);
    // Optional values: null when empty.
    json_writer& value(std::string_view key, const std::optional<std::uint64_t>& v);
    json_writer& value(std::string_view key, const std::optional<std::string>& v);
    // The document, ending with a newline.
    std::string str() const { return out_ + "\n"; }

    static std::string quote(std::string_view s);

private:
    void item(std::string_view key);
    // A line break and the indentation of the current depth.
    void newline() {
        out_ += '\n';
        out_.append(first_.size() * 2, ' ');
    }
    std::string out_;
    std::vector<bool> first_;  // per open container: nothing written in it yet
};

} // namespace thin::daemon
