#include "thin/daemon/catalogue.h"

#include "thin/daemon/text.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <set>
#include <sstream>
#include <sys/stat.h>
#include <system_error>
#include <unistd.h>

namespace thin::daemon {

namespace {

constexpr const char* HEADER = "thinpool-catalogue 1";

std::system_error sys_error(const std::string& what) {
    return std::system_error(errno, std::generic_category(), what);
}

std::vector<std::string> split_spaces(const std::string& line) {
    std::vector<std::string> out;
    std::istringstream in(line);
    std::string w;
    while (in >> w) out.push_back(w);
    return out;
}

volume parse_volume(const std::vector<std::string>& w) {
    if (w.size() < 2) throw parse_error("a volume line needs a name");
    volume v;
    v.name = w[1];
    check_volume_name(v.name);
    bool have_id = false, have_size = false, have_created = false;
    for (std::size_t i = 2; i < w.size(); ++i) {
        auto eq = w[i].find('=');
        if (eq == std::string::npos) throw parse_error("expected key=value, got '" + w[i] + "'");
        std::string key = w[i].substr(0, eq), val = w[i].substr(eq + 1);
        if (key == "id") {
            v.id = parse_u64(val, "device id");
            if (v.id > MAX_DEV_ID) throw parse_error("device id " + val + " out of range");
            have_id = true;
        } else if (key == "size") {
            v.size = parse_u64(val, "size");
            if (v.size % 512) throw parse_error("size " + val + " is not a multiple of 512");
            have_size = true;
        } else if (key == "created") {
            v.created = parse_iso_time(val);
            have_created = true;
        } else if (key == "origin") {
            v.origin = decode_word(val);
        } else {
            throw parse_error("unknown field '" + key + "'");
        }
    }
    if (!have_id || !have_size || !have_created) throw parse_error("volume " + v.name + ": needs id, size and created");
    return v;
}

void write_all(int fd, const std::string& s, const std::string& path) {
    std::size_t off = 0;
    while (off < s.size()) {
        ssize_t n = ::write(fd, s.data() + off, s.size() - off);
        if (n < 0) {
            if (errno == EINTR) continue;
            throw sys_error(path + ": write failed");
        }
        off += std::size_t(n);
    }
}

void fsync_path(const std::string& path, int flags) {
    int fd = ::open(path.c_str(), flags | O_CLOEXEC);
    if (fd < 0) throw sys_error(path + ": cannot open to sync");
    int rc = ::fsync(fd);
    int e = errno;
    ::close(fd);
    if (rc < 0) {
        errno = e;
        throw sys_error(path + ": fsync failed");
    }
}

void rename_or_throw(const std::string& from, const std::string& to) {
    if (::rename(from.c_str(), to.c_str()) < 0) throw sys_error("cannot rename " + from + " to " + to);
}

// Makes `to` another name of `from`, atomically replacing whatever `to` was.
void link_replace(const std::string& from, const std::string& to) {
    std::string tmp = to + ".tmp";
    ::unlink(tmp.c_str());
    if (::link(from.c_str(), tmp.c_str()) < 0) throw sys_error("cannot link " + from + " to " + tmp);
    rename_or_throw(tmp, to);
}

std::optional<catalogue> load_file(const std::string& path) {
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT) return std::nullopt;
        throw sys_error(path + ": cannot open");
    }
    std::string text;
    char buf[65536];
    for (;;) {
        ssize_t n = ::read(fd, buf, sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) {
            int e = errno;
            ::close(fd);
            errno = e;
            throw sys_error(path + ": read failed");
        }
        if (n == 0) break;
        text.append(buf, std::size_t(n));
        if (text.size() > (64u << 20)) {
            ::close(fd);
            throw parse_error(path + ": too large for a catalogue");
        }
    }
    ::close(fd);
    return parse_catalogue(text, path);
}

} // namespace

const volume* catalogue::find(const std::string& name) const {
    for (const auto& v : volumes)
        if (v.name == name) return &v;
    return nullptr;
}

volume* catalogue::find(const std::string& name) {
    for (auto& v : volumes)
        if (v.name == name) return &v;
    return nullptr;
}

const volume* catalogue::find_id(dev_id id) const {
    for (const auto& v : volumes)
        if (v.id == id) return &v;
    return nullptr;
}

void catalogue::add(volume v) {
    auto at = std::lower_bound(volumes.begin(), volumes.end(), v.name,
                               [](const volume& a, const std::string& n) { return a.name < n; });
    volumes.insert(at, std::move(v));
}

void catalogue::remove(const std::string& name) {
    std::erase_if(volumes, [&](const volume& v) { return v.name == name; });
}

std::string format_catalogue(const catalogue& c) {
    std::ostringstream o;
    o << "# thinpool catalogue, see thinpool(8). Written by `thinpool run`; do not edit while it runs.\n"
      << HEADER << "\n"
      << "transaction " << c.transaction_id << "\n";
    for (const auto& v : c.volumes) {
        o << "volume " << v.name << " id=" << v.id << " size=" << v.size << " created=" << iso_time(v.created);
        if (v.origin) o << " origin=" << encode_word(*v.origin);
        o << "\n";
    }
    return o.str();
}

catalogue parse_catalogue(const std::string& text, const std::string& name) {
    catalogue c;
    bool have_header = false, have_tid = false;
    std::set<std::string> names;
    std::set<dev_id> ids;
    std::istringstream in(text);
    std::string line;
    int n = 0;
    try {
        while (std::getline(in, line)) {
            ++n;
            auto w = split_spaces(line);
            if (w.empty() || w[0][0] == '#') continue;
            if (!have_header) {
                if (line != HEADER) throw parse_error("not a thinpool catalogue (expected '" + std::string(HEADER) + "')");
                have_header = true;
            } else if (w[0] == "transaction") {
                if (have_tid || w.size() != 2) throw parse_error("expected one 'transaction N' line");
                c.transaction_id = parse_u64(w[1], "transaction id");
                have_tid = true;
            } else if (w[0] == "volume") {
                volume v = parse_volume(w);
                if (!names.insert(v.name).second) throw parse_error("volume " + v.name + " listed twice");
                if (!ids.insert(v.id).second) throw parse_error("device id " + std::to_string(v.id) + " used twice");
                c.add(std::move(v));
            } else {
                throw parse_error("unknown line '" + w[0] + "'");
            }
        }
    } catch (const parse_error& e) {
        throw parse_error(name + ":" + std::to_string(n) + ": " + e.what());
    }
    if (!have_header || !have_tid) throw parse_error(name + ": incomplete catalogue (no header or transaction line)");
    return c;
}

catalogue_store::catalogue_store(std::string dir) : dir_(std::move(dir)) {}

std::optional<catalogue> catalogue_store::load() const { return load_file(path()); }
std::optional<catalogue> catalogue_store::load_prev() const { return load_file(prev_path()); }

void catalogue_store::commit(const catalogue& c) {
    const std::string tmp = path() + ".tmp";
    int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) throw sys_error(tmp + ": cannot create");
    try {
        write_all(fd, format_catalogue(c), tmp);
        if (::fsync(fd) < 0) throw sys_error(tmp + ": fsync failed");
    } catch (...) {
        ::close(fd);
        ::unlink(tmp.c_str());
        throw;
    }
    ::close(fd);
    struct stat st;
    if (::stat(path().c_str(), &st) == 0) link_replace(path(), prev_path());
    rename_or_throw(tmp, path());
    fsync_path(dir_, O_RDONLY | O_DIRECTORY);
}

void catalogue_store::roll_back() {
    link_replace(path(), dir_ + "/catalogue.rolled-back");
    rename_or_throw(prev_path(), path());
    fsync_path(dir_, O_RDONLY | O_DIRECTORY);
}

void catalogue_store::remove_stale_tmp() {
    ::unlink((path() + ".tmp").c_str());
    ::unlink((prev_path() + ".tmp").c_str());
}

} // namespace thin::daemon
