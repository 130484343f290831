// The control commands (thinpool(8), COMMANDS). Each request arrives as words; the answer is an
// "ok" or "error <errno> <message>" line and a body. Every change of catalogue or devices runs
// under s.mutex through apply_change (reconcile.cc).
#include "thin/daemon/json.h"
#include "thin/daemon/protocol.h"
#include "thin/daemon/state.h"
#include "thin/daemon/text.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <ctime>
#include <fcntl.h>
#include <map>
#include <poll.h>
#include <set>
#include <sstream>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

namespace thin::daemon {

namespace {

using thin::pool::pool_error;

// The words after the positional ones: key=value options, or bare flags (value "").
std::map<std::string, std::string> options_of(const std::vector<std::string>& w, std::size_t from,
                                              const std::set<std::string>& allowed) {
    std::map<std::string, std::string> out;
    for (std::size_t i = from; i < w.size(); ++i) {
        auto eq = w[i].find('=');
        std::string key = w[i].substr(0, eq);
        if (!allowed.count(key)) throw command_error(EINVAL, "unexpected argument '" + w[i] + "' for " + w[0]);
        out[key] = eq == std::string::npos ? std::string() : w[i].substr(eq + 1);
    }
    return out;
}

void need_args(const std::vector<std::string>& w, std::size_t n, const char* usage) {
    if (w.size() < n + 1) throw command_error(EINVAL, std::string("usage: ") + usage);
}

void check_writable(state& s) {
    if (s.needs_restart)
        throw command_error(EIO, "an earlier change could not be recorded; restart the daemon to reconcile the catalogue");
    auto m = s.pool->mode();
    if (s.opts.features.read_only || m == thin::pool::pool_mode::read_only || m == thin::pool::pool_mode::fail ||
        m == thin::pool::pool_mode::out_of_metadata_space)
        throw command_error(EROFS, std::string("the pool is in ") + thin::pool::to_string(m) +
                                       " mode: volumes cannot be created, deleted or changed");
}

const volume& existing(const state& s, const std::string& name) {
    check_volume_name(name);
    const volume* v = s.cat.find(name);
    if (!v) throw command_error(ENOENT, "no volume named " + name);
    return *v;
}

void check_new_name(const state& s, const std::string& name) {
    check_volume_name(name);
    if (s.cat.find(name)) throw command_error(EEXIST, "a volume named " + name + " already exists");
}

bool device_exists(state& s, dev_id id) {
    for (const auto& d : s.pool->devices(false))
        if (d.id == id) return true;
    return false;
}

// The external origin must be an absolute path to something readable; its size in bytes.
std::uint64_t check_origin(const std::string& path) {
    if (path.empty() || path[0] != '/') throw command_error(EINVAL, "the origin must be an absolute path: " + path);
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) throw command_error(errno, "cannot open the origin " + path + ": " + std::strerror(errno));
    struct stat st;
    std::uint64_t size = 0;
    bool ok = ::fstat(fd, &st) == 0 && (S_ISREG(st.st_mode) || S_ISBLK(st.st_mode));
    if (ok) {
        off_t end = ::lseek(fd, 0, SEEK_END);
        ok = end >= 0;
        size = std::uint64_t(end);
    }
    ::close(fd);
    if (!ok) throw command_error(EINVAL, "the origin " + path + " is not a regular file or block device");
    return size;
}

// ---- changes -----------------------------------------------------------------------------------

std::string cmd_create(state& s, const std::vector<std::string>& w) {
    need_args(w, 1, "create NAME size=BYTES [origin=PATH]");
    auto o = options_of(w, 2, {"size", "origin"});
    std::lock_guard lk(s.mutex);
    check_writable(s);
    check_new_name(s, w[1]);
    volume v;
    v.name = w[1];
    v.created = std::int64_t(std::time(nullptr));
    std::string note;
    if (o.count("origin")) {
        // The origin is read in whole sectors, as a loop device over the file would show it: a
        // partial last sector is not part of it (and past the origin's end a volume reads zeros).
        std::uint64_t osize = check_origin(o["origin"]);
        if (osize < 512) throw command_error(EINVAL, "the origin " + o["origin"] + " is smaller than one 512-byte sector");
        v.origin = o["origin"];
        v.size = osize / 512 * 512;
        if (osize % 512)
            note = "note: the origin's last " + std::to_string(osize % 512) +
                   " bytes are a partial sector and are not part of the volume\n";
    }
    if (o.count("size")) v.size = parse_size(o["size"], "size");
    else if (!v.origin) throw command_error(EINVAL, "create needs a size");
    v.id = new_device_ids(s, 1)[0];
    catalogue next = s.cat;
    next.add(v);
    apply_change(s, next, [&] { s.pool->message("create_thin " + std::to_string(v.id)); });
    s.log("created volume " + v.name + " (device " + std::to_string(v.id) + ", " + human_size(v.size) +
          (v.origin ? ", origin " + *v.origin : std::string()) + ")");
    return "created " + v.name + " (device " + std::to_string(v.id) + ", " + std::to_string(v.size) + " bytes)\n" + note;
}

std::string cmd_snapshot(state& s, const std::vector<std::string>& w) {
    if (w.size() < 3 || (w.size() - 1) % 2)
        throw command_error(EINVAL, "usage: snapshot SOURCE NAME [SOURCE2 NAME2 ...]");
    std::lock_guard lk(s.mutex);
    check_writable(s);
    catalogue next = s.cat;
    const std::size_t n = (w.size() - 1) / 2;
    auto ids = new_device_ids(s, n);
    std::vector<std::pair<dev_id, dev_id>> pairs;
    std::vector<std::string> done;
    for (std::size_t i = 0; i < n; ++i) {
        const volume& src = existing(s, w[1 + 2 * i]);
        const std::string& name = w[2 + 2 * i];
        check_volume_name(name);
        if (next.find(name)) throw command_error(EEXIST, "a volume named " + name + " already exists");
        if (!device_exists(s, src.id))
            throw command_error(ENODATA, "volume " + src.name + " has no device " + std::to_string(src.id) + " in the pool");
        volume v{name, ids[i], src.size, std::int64_t(std::time(nullptr)), src.origin};
        next.add(v);
        pairs.emplace_back(v.id, src.id);
        done.push_back(name + " of " + src.name + " (device " + std::to_string(v.id) + ")");
    }
    apply_change(s, next, [&] { s.pool->create_snapshots(pairs); });
    std::string out;
    for (const auto& d : done) {
        s.log("created snapshot " + d);
        out += "created snapshot " + d + "\n";
    }
    return out;
}

std::string cmd_delete(state& s, const std::vector<std::string>& w) {
    need_args(w, 1, "delete NAME");
    options_of(w, 2, {});
    std::lock_guard lk(s.mutex);
    check_writable(s);
    const volume v = existing(s, w[1]);
    if (std::size_t n = s.volumes->users(v.name))
        throw command_error(EBUSY, "volume " + v.name + " is in use (" + std::to_string(n) +
                                       " connection" + (n == 1 ? "" : "s") + "): disconnect first");
    s.volumes->wait_idle(v.name);
    catalogue next = s.cat;
    next.remove(v.name);
    bool have_device = device_exists(s, v.id);
    apply_change(s, next, [&] {
        if (have_device) s.pool->message("delete " + std::to_string(v.id));
    });
    s.log("deleted volume " + v.name + " (device " + std::to_string(v.id) + (have_device ? ")" : ", already gone)"));
    return "deleted " + v.name + "\n";
}

std::string cmd_resize(state& s, const std::vector<std::string>& w) {
    need_args(w, 1, "resize NAME size=BYTES [force]");
    auto o = options_of(w, 2, {"size", "force"});
    if (!o.count("size")) throw command_error(EINVAL, "resize needs a size");
    std::uint64_t size = parse_size(o["size"], "size");
    std::lock_guard lk(s.mutex);
    check_writable(s);
    const volume v = existing(s, w[1]);
    if (size < v.size) {
        for (const auto& d : s.pool->devices(false)) {
            if (d.id != v.id || !d.highest_mapped_block) continue;
            std::uint64_t end = (*d.highest_mapped_block + 1) * s.block_bytes();
            if (end > size && !o.count("force"))
                throw command_error(EINVAL, "volume " + v.name + " has blocks mapped up to byte " + std::to_string(end) +
                                                ", past the new size " + std::to_string(size) +
                                                "; shrinking unmaps nothing (those blocks stay allocated, out of "
                                                "reach): use --force to shrink anyway");
        }
    }
    catalogue next = s.cat;
    next.find(v.name)->size = size;
    apply_change(s, next, [] {});
    s.volumes->set_size(v.name, size);
    s.log("resized volume " + v.name + " from " + human_size(v.size) + " to " + human_size(size));
    return "resized " + v.name + " to " + std::to_string(size) + " bytes\n";
}

// ---- message passthrough -------------------------------------------------------------------------

std::string cmd_message(state& s, const std::vector<std::string>& w) {
    need_args(w, 1, "message WORDS...");
    static const std::set<std::string> allowed = {"create_thin", "create_snap", "delete", "set_transaction_id",
                                                  "reserve_metadata_snap", "release_metadata_snap"};
    std::string name = w[1];
    for (char& c : name) c = char(std::tolower(static_cast<unsigned char>(c)));
    if (!allowed.count(name))
        throw command_error(EINVAL, "unsupported message '" + w[1] +
                                        "' (create_thin, create_snap, delete, set_transaction_id, "
                                        "reserve_metadata_snap, release_metadata_snap)");
    std::string text;
    for (std::size_t i = 1; i < w.size(); ++i) text += (i > 1 ? " " : "") + w[i];
    std::lock_guard lk(s.mutex);
    if (s.needs_restart) check_writable(s);
    if (name == "delete" && w.size() == 3) {
        // A volume in use stays: the pool only knows whether the device is active.
        if (const volume* v = s.cat.find_id(parse_u64(w[2], "device id")))
            if (s.volumes->users(v->name)) throw command_error(EBUSY, "volume " + v->name + " is in use");
    }
    s.pool->message(text);
    s.log("message: " + text);
    if (name == "set_transaction_id") {
        // The catalogue follows the metadata's transaction id.
        catalogue next = s.cat;
        next.transaction_id = parse_u64(w[3], "transaction id");
        s.store.commit(next);
        s.cat = next;
        return "";
    }
    if (name != "create_thin" && name != "create_snap" && name != "delete") return "";
    catalogue next = s.cat;
    std::string note;
    dev_id id = parse_u64(w[2], "device id");
    if (name == "delete") {
        if (const volume* v = next.find_id(id)) {
            note = "volume " + v->name + " removed from the catalogue";
            next.remove(v->name);
        }
    } else {
        volume v{"thin-" + std::to_string(id), id, 0, std::int64_t(std::time(nullptr)), std::nullopt};
        for (int n = 1; next.find(v.name); ++n) v.name = "thin-" + std::to_string(id) + "." + std::to_string(n);
        if (name == "create_snap")
            if (const volume* o = next.find_id(parse_u64(w[3], "device id"))) {
                v.size = o->size;
                v.origin = o->origin;
            }
        note = "device " + std::to_string(id) + " added to the catalogue as volume " + v.name + " (" +
               std::to_string(v.size) + " bytes)";
        next.add(v);
    }
    if (note.empty()) return "";
    apply_change(s, next, [] {});
    s.log("catalogue: " + note + "; transaction " + std::to_string(s.cat.transaction_id));
    return note + "\n";
}

// ---- reports ------------------------------------------------------------------------------------

std::string table(const std::vector<std::vector<std::string>>& rows) {
    std::vector<std::size_t> width;
    for (const auto& r : rows) {
        width.resize(std::max(width.size(), r.size()));
        for (std::size_t i = 0; i < r.size(); ++i) width[i] = std::max(width[i], r[i].size());
    }
    std::string out;
    for (const auto& r : rows) {
        std::string line;
        for (std::size_t i = 0; i < r.size(); ++i)
            line += i + 1 < r.size() ? r[i] + std::string(width[i] - r[i].size() + 2, ' ') : r[i];
        out += line + "\n";
    }
    return out;
}

std::string cmd_list(state& s, const std::vector<std::string>& w) {
    auto o = options_of(w, 1, {"json"});
    std::lock_guard lk(s.mutex);
    if (o.count("json")) {
        json_writer j;
        j.begin_object().value("transaction_id", s.cat.transaction_id).begin_array("volumes");
        for (const auto& v : s.cat.volumes)
            j.begin_object()
                .value("name", v.name)
                .value("id", std::uint64_t(v.id))
                .value("size", v.size)
                .value("origin", v.origin)
                .value("created", iso_time(v.created))
                .end_object();
        return j.end_array().end_object().str();
    }
    std::vector<std::vector<std::string>> rows = {{"NAME", "ID", "SIZE", "CREATED", "ORIGIN"}};
    for (const auto& v : s.cat.volumes)
        rows.push_back({v.name, std::to_string(v.id), human_size(v.size), iso_time(v.created), v.origin.value_or("-")});
    return table(rows);
}

std::string discard_text(const thin::pool::pool_status& st) {
    return st.ignore_discard ? "ignore_discard" : st.discard_passdown ? "discard_passdown" : "no_discard_passdown";
}

using device_map = std::map<dev_id, thin::pool::device_info>;

std::string status_json(state& s, const thin::pool::pool_status& st, const device_map& devs) {
    const std::uint64_t B = s.block_bytes();
    json_writer j;
    j.begin_object().begin_object("pool");
    j.value("dir", s.opts.dir).value("metadata", s.opts.metadata_path).value("data", s.opts.data_path);
    j.value("mode", thin::pool::to_string(st.mode)).value("transaction_id", st.transaction_id);
    j.value("block_size", B);
    j.begin_object("data").value("used_blocks", st.used_data_blocks).value("total_blocks", st.total_data_blocks);
    j.value("used_bytes", st.used_data_blocks * B).value("total_bytes", st.total_data_blocks * B).end_object();
    j.begin_object("metadata").value("used_blocks", st.used_metadata_blocks);
    j.value("total_blocks", st.total_metadata_blocks).value("used_bytes", st.used_metadata_blocks * 4096);
    j.value("total_bytes", st.total_metadata_blocks * 4096).end_object();
    j.value("needs_check", st.needs_check).value("held_metadata_root", st.held_metadata_root);
    j.value("low_water_mark", s.opts.low_water_mark).value("metadata_low_water_mark", st.metadata_low_water_mark);
    j.value("discard", discard_text(st)).value("error_if_no_space", st.error_if_no_space);
    j.value("read_only", s.opts.features.read_only).end_object();
    j.begin_array("volumes");
    for (const auto& v : s.cat.volumes) {
        auto it = devs.find(v.id);
        bool present = it != devs.end();
        j.begin_object().value("name", v.name).value("id", std::uint64_t(v.id)).value("size", v.size);
        j.value("present", present);
        if (present) {
            j.value("mapped_blocks", it->second.mapped_blocks).value("exclusive_blocks", it->second.exclusive_blocks);
            j.value("highest_mapped_block", it->second.highest_mapped_block);
            j.value("active", it->second.active);
        } else {
            j.null("mapped_blocks").null("exclusive_blocks").null("highest_mapped_block").value("active", false);
        }
        j.value("origin", v.origin).value("created", iso_time(v.created));
        j.value("connections", std::uint64_t(s.volumes->users(v.name))).end_object();
    }
    return j.end_array().end_object().str();
}

std::string status_text(state& s, const thin::pool::pool_status& st, const device_map& devs) {
    const std::uint64_t B = s.block_bytes();
    auto used = [&](std::uint64_t u, std::uint64_t t, std::uint64_t bytes) {
        return std::to_string(u) + " of " + std::to_string(t) + " blocks used (" + human_size(u * bytes) + " of " +
               human_size(t * bytes) + ")";
    };
    std::string out = table({{"pool", s.opts.dir},
                             {"metadata", s.opts.metadata_path},
                             {"data", s.opts.data_path},
                             {"mode", thin::pool::to_string(st.mode)},
                             {"transaction", std::to_string(st.transaction_id)},
                             {"block size", human_size(B)},
                             {"data used", used(st.used_data_blocks, st.total_data_blocks, B)},
                             {"metadata used", used(st.used_metadata_blocks, st.total_metadata_blocks, 4096)},
                             {"needs check", st.needs_check ? "yes" : "no"},
                             {"held root", st.held_metadata_root ? std::to_string(*st.held_metadata_root) : "-"},
                             {"low water mark", std::to_string(s.opts.low_water_mark) + " blocks"},
                             {"discards", discard_text(st)}});
    std::vector<std::vector<std::string>> rows = {
        {"NAME", "ID", "SIZE", "MAPPED", "EXCLUSIVE", "ORIGIN", "CONNECTIONS"}};
    for (const auto& v : s.cat.volumes) {
        auto it = devs.find(v.id);
        std::string mapped = "missing", excl = "-";
        if (it != devs.end()) {
            mapped = human_size(it->second.mapped_blocks * B);
            excl = it->second.exclusive_blocks ? human_size(*it->second.exclusive_blocks * B) : "-";
        }
        rows.push_back({v.name, std::to_string(v.id), human_size(v.size), mapped, excl, v.origin.value_or("-"),
                        std::to_string(s.volumes->users(v.name))});
    }
    return out + "\n" + table(rows);
}

std::string cmd_status(state& s, const std::vector<std::string>& w) {
    auto o = options_of(w, 1, {"json"});
    std::lock_guard lk(s.mutex);
    auto st = s.pool->status_info(false);
    device_map devs;
    for (auto& d : s.pool->devices(true)) devs[d.id] = d;
    return o.count("json") ? status_json(s, st, devs) : status_text(s, st, devs);
}

// ---- streams and the rest ---------------------------------------------------------------------------

void cmd_events(state& s, int fd, int stop_fd) {
    auto sub = s.events.subscribe();
    s.log("events: a client subscribed (" + std::to_string(s.events.subscribers()) + " in all)");
    send_all(fd, "ok\n");
    for (;;) {
        pollfd p[3] = {{fd, POLLIN, 0}, {sub->fd(), POLLIN, 0}, {stop_fd, POLLIN, 0}};
        int r = ::poll(p, 3, -1);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0 || (p[2].revents & POLLIN)) break;
        if (p[0].revents) {
            char c;
            if (::recv(fd, &c, 1, MSG_DONTWAIT) <= 0) break;  // the client left (it sends nothing else)
        }
        bool gone = false;
        if (p[1].revents & POLLIN)
            for (const auto& line : sub->take())
                if (!send_all(fd, line + "\n")) gone = true;
        if (gone) break;
    }
    s.events.unsubscribe(sub);
}

std::string dispatch(state& s, const std::vector<std::string>& w) {
    const std::string& c = w[0];
    if (c == "ping") return "thinpool " THINPOOL_VERSION "\n";
    if (c == "create") return cmd_create(s, w);
    if (c == "snapshot") return cmd_snapshot(s, w);
    if (c == "delete") return cmd_delete(s, w);
    if (c == "resize") return cmd_resize(s, w);
    if (c == "list") return cmd_list(s, w);
    if (c == "status") return cmd_status(s, w);
    if (c == "message") return cmd_message(s, w);
    throw command_error(EINVAL, "unknown command '" + c + "'");
}

} // namespace

void handle_request(state& s, int fd, int stop_fd, const std::vector<std::string>& words) {
    if (words.empty()) {
        send_all(fd, format_status_line(false, EINVAL, "empty request"));
        return;
    }
    std::string body;
    try {
        if (words[0] == "events") {
            options_of(words, 1, {});
            cmd_events(s, fd, stop_fd);
            return;
        }
        if (words[0] == "stop") {
            options_of(words, 1, {});
            s.log("stop requested through the control socket");
            send_all(fd, "ok\nstopping\n");
            std::uint64_t one = 1;
            (void)!::write(s.stop_efd, &one, sizeof one);
            return;
        }
        body = dispatch(s, words);
    } catch (const command_error& e) {
        send_all(fd, format_status_line(false, e.error_code(), e.what()));
        return;
    } catch (const pool_error& e) {
        send_all(fd, format_status_line(false, e.error_code(), e.what()));
        return;
    } catch (const parse_error& e) {
        send_all(fd, format_status_line(false, EINVAL, e.what()));
        return;
    } catch (const std::system_error& e) {
        s.log(std::string("control: ") + words[0] + " failed: " + e.what());
        send_all(fd, format_status_line(false, e.code().value() ? e.code().value() : EIO, e.what()));
        return;
    } catch (const std::exception& e) {
        s.log(std::string("control: ") + words[0] + " failed: " + e.what());
        send_all(fd, format_status_line(false, EIO, e.what()));
        return;
    }
    send_all(fd, "ok\n" + body);
}

} // namespace thin::daemon
