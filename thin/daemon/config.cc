#include "thin/daemon/config.h"

#include "thin/daemon/text.h"

#include <cctype>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

namespace thin::daemon {

namespace {

std::string trim(const std::string& s) {
    std::size_t b = 0, e = s.size();
    while (b < e && std::isspace(static_cast<unsigned char>(s[b]))) ++b;
    while (e > b && std::isspace(static_cast<unsigned char>(s[e - 1]))) --e;
    return s.substr(b, e - b);
}

std::vector<std::string> split_list(const std::string& v) {
    std::vector<std::string> out;
    std::string cur;
    for (char c : v + ",") {
        if (c == ',' || std::isspace(static_cast<unsigned char>(c))) {
            if (!cur.empty()) out.push_back(cur);
            cur.clear();
        } else {
            cur += c;
        }
    }
    return out;
}

bool parse_bool(const std::string& key, const std::string& v) {
    std::string l;
    for (char c : v) l += char(std::tolower(static_cast<unsigned char>(c)));
    if (l == "1" || l == "yes" || l == "true" || l == "on") return true;
    if (l == "0" || l == "no" || l == "false" || l == "off") return false;
    throw parse_error("invalid " + key + " '" + v + "': expected yes or no");
}

std::string non_empty(const std::string& key, const std::string& v) {
    if (v.empty()) throw parse_error(key + " needs a value");
    return v;
}

template <typename T>
void take(std::optional<T>& mine, const std::optional<T>& later) {
    if (later) mine = later;
}

} // namespace

void settings::set(const std::string& key, const std::string& value) {
    if (key == "metadata") metadata = non_empty(key, value);
    else if (key == "data") data = non_empty(key, value);
    else if (key == "socket") socket = non_empty(key, value);
    else if (key == "nbd_socket") nbd_socket = value;  // empty: no NBD Unix socket
    else if (key == "nbd_tcp") {
        if (!value.empty()) split_host_port(value);
        nbd_tcp = value;
    } else if (key == "block_size") {
        std::uint64_t b = parse_size(value, "block size", 0);
        if (b < (64u << 10) || b > (1ull << 30) || b % (64u << 10))
            throw parse_error("invalid block size '" + value + "': must be a multiple of 64 KiB from 64 KiB to 1 GiB");
        block_size = std::uint32_t(b / 512);
    } else if (key == "low_water_mark") low_water_mark = parse_u64(value, "low water mark (blocks)");
    else if (key == "features") {
        auto words = split_list(value);
        thin::pool::pool_features f;
        for (const auto& w : words) {
            try {
                thin::pool::parse_feature(w, f);
            } catch (const thin::pool::pool_error&) {
                throw parse_error("unknown pool feature '" + w +
                                  "' (skip_block_zeroing, ignore_discard, no_discard_passdown, read_only, "
                                  "error_if_no_space)");
            }
        }
        features = words;
    } else if (key == "no_space_timeout") no_space_timeout = std::chrono::seconds(parse_u64(value, "no_space_timeout (seconds)"));
    else if (key == "data_size") data_size = parse_size(value, "data size");
    else if (key == "metadata_size") metadata_size = parse_size(value, "metadata size", 4096);
    else if (key == "read_only") read_only = parse_bool(key, value);
    else throw parse_error("unknown key '" + key + "'");
}

void settings::merge(const settings& l) {
    take(metadata, l.metadata);
    take(data, l.data);
    take(socket, l.socket);
    take(nbd_socket, l.nbd_socket);
    take(nbd_tcp, l.nbd_tcp);
    take(block_size, l.block_size);
    take(low_water_mark, l.low_water_mark);
    take(features, l.features);
    take(no_space_timeout, l.no_space_timeout);
    take(data_size, l.data_size);
    take(metadata_size, l.metadata_size);
    take(read_only, l.read_only);
}

settings parse_config_text(const std::string& text, const std::string& name) {
    settings s;
    std::istringstream in(text);
    std::string line;
    for (int n = 1; std::getline(in, line); ++n) {
        std::string t = trim(line);
        if (t.empty() || t[0] == '#') continue;
        auto eq = t.find('=');
        std::string where = name + ":" + std::to_string(n) + ": ";
        if (eq == std::string::npos) throw parse_error(where + "expected 'key = value', got '" + t + "'");
        std::string key = trim(t.substr(0, eq));
        if (key.empty()) throw parse_error(where + "missing key before '='");
        try {
            s.set(key, trim(t.substr(eq + 1)));
        } catch (const parse_error& e) {
            throw parse_error(where + e.what());
        }
    }
    return s;
}

settings read_config_file(const std::string& path) {
    std::ifstream in(path);
    if (!in) throw parse_error(path + ": cannot read: " + std::strerror(errno));
    std::ostringstream text;
    text << in.rdbuf();
    if (in.bad()) throw parse_error(path + ": read error");
    return parse_config_text(text.str(), path);
}

std::pair<std::string, std::uint16_t> split_host_port(const std::string& text) {
    auto colon = text.rfind(':');
    if (colon == std::string::npos || colon == 0 || colon + 1 == text.size())
        throw parse_error("invalid NBD TCP address '" + text + "': expected HOST:PORT");
    std::string host = text.substr(0, colon);
    if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
    std::uint64_t port = 0;
    try {
        port = parse_u64(text.substr(colon + 1), "port");
    } catch (const parse_error&) {
        throw parse_error("invalid NBD TCP address '" + text + "': the port must be a number");
    }
    if (port == 0 || port > 65535) throw parse_error("invalid NBD TCP address '" + text + "': port out of range");
    return {host, std::uint16_t(port)};
}

daemon_options resolve(const std::string& dir, const settings& s) {
    if (dir.empty()) throw parse_error("the state directory must not be empty");
    daemon_options o;
    o.dir = dir;
    o.metadata_given = bool(s.metadata);
    o.data_given = bool(s.data);
    o.metadata_path = s.metadata.value_or(dir + "/metadata");
    o.data_path = s.data.value_or(dir + "/data");
    o.block_size = s.block_size;
    o.low_water_mark = s.low_water_mark.value_or(0);
    if (s.features) {
        o.feature_words = *s.features;
        for (const auto& w : o.feature_words) thin::pool::parse_feature(w, o.features);
    }
    if (s.read_only.value_or(false)) o.features.read_only = true;
    o.socket_path = s.socket.value_or(dir + "/control.sock");
    o.nbd_socket_path = s.nbd_socket.value_or(dir + "/nbd.sock");
    if (s.nbd_tcp && !s.nbd_tcp->empty()) o.nbd_tcp = s.nbd_tcp;
    if (s.no_space_timeout) o.no_space_timeout = *s.no_space_timeout;
    o.data_size_given = bool(s.data_size);
    o.metadata_size_given = bool(s.metadata_size);
    o.data_size = s.data_size.value_or(DEFAULT_DATA_BYTES);
    o.metadata_size = s.metadata_size.value_or(DEFAULT_METADATA_BYTES);
    if (o.metadata_path == o.data_path) throw parse_error("the metadata and data devices must differ");
    if (o.socket_path.size() >= 108) throw parse_error("control socket path too long (over 107 bytes): " + o.socket_path);
    return o;
}

} // namespace thin::daemon
