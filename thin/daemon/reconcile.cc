// The catalogue against the metadata (thinpool(8), CATALOGUE): transaction ids tie the two
// together; a start finds them equal, or the catalogue one step ahead of a crash (rolled back),
// or unrelated (refused unless --adopt). Devices the catalogue does not know are adopted as
// thin-<id>; entries whose device is gone are reported.
#include "thin/daemon/daemon.h"
#include "thin/daemon/state.h"
#include "thin/daemon/text.h"

#include <algorithm>
#include <ctime>
#include <map>
#include <set>

namespace thin::daemon {

namespace {

using thin::pool::device_info;

std::map<dev_id, device_info> metadata_devices(state& s) {
    std::map<dev_id, device_info> out;
    for (auto& d : s.pool->devices(false)) out[d.id] = d;
    return out;
}

std::int64_t now() { return std::int64_t(std::time(nullptr)); }

// A read-only pool takes no messages: reconciliation then only reports.
bool metadata_writable(state& s) {
    return !s.opts.features.read_only && s.pool->mode() == thin::pool::pool_mode::write;
}

// A name for an adopted device: thin-<id>, with a suffix if a volume already has it.
std::string adopted_name(const catalogue& c, dev_id id) {
    std::string base = "thin-" + std::to_string(id), name = base;
    for (int n = 1; c.find(name); ++n) name = base + "." + std::to_string(n);
    return name;
}

// The size an unknown device gets: up to its highest mapped block (0 when nothing is mapped).
std::uint64_t size_from_mappings(const state& s, const device_info& d) {
    return d.highest_mapped_block ? (*d.highest_mapped_block + 1) * s.block_bytes() : 0;
}

void refuse_mismatch(state& s, const catalogue& cur, const std::optional<catalogue>& prev, std::uint64_t md_tid) {
    std::string prev_text = prev ? " (its previous version: " + std::to_string(prev->transaction_id) + ")" : "";
    throw startup_error("catalogue " + s.store.path() + " describes transaction " + std::to_string(cur.transaction_id) +
                        prev_text + " but the metadata " + s.opts.metadata_path + " is at transaction " +
                        std::to_string(md_tid) +
                        ": they were changed apart; start with --adopt to rebuild the catalogue from the metadata "
                        "(names, sizes and origins kept for the device ids it knows)");
}

// --adopt: a catalogue describing exactly the metadata's devices.
catalogue adopt(state& s, const std::optional<catalogue>& cur, const std::optional<catalogue>& prev,
                const std::map<dev_id, device_info>& devs, std::uint64_t md_tid) {
    catalogue c;
    c.transaction_id = md_tid;
    std::vector<dev_id> unknown;
    for (const auto& [id, d] : devs) {
        const volume* known = cur ? cur->find_id(id) : nullptr;
        if (!known && prev) known = prev->find_id(id);
        if (known && !c.find(known->name)) {
            c.add(*known);
            s.log("adopt: device " + std::to_string(id) + " keeps its name " + known->name);
        } else {
            unknown.push_back(id);
        }
    }
    for (dev_id id : unknown) {
        volume v{adopted_name(c, id), id, size_from_mappings(s, devs.at(id)), now(), std::nullopt};
        s.log("adopt: device " + std::to_string(id) + " becomes volume " + v.name + " (" + human_size(v.size) +
              ", up to its highest mapped block)");
        c.add(v);
    }
    if (cur)
        for (const auto& v : cur->volumes)
            if (!devs.count(v.id)) s.log("adopt: volume " + v.name + " dropped: device " + std::to_string(v.id) + " is gone");
    s.store.commit(c);
    s.log("adopt: catalogue rebuilt for transaction " + std::to_string(md_tid) + " with " +
          std::to_string(c.volumes.size()) + " volumes");
    return c;
}

// After a roll-back: undo what the interrupted change did to the metadata (devices it created)
// and finish deletions it already made, so both sides agree again.
void clean_up_interrupted(state& s, const catalogue& abandoned, std::map<dev_id, device_info>& devs) {
    if (!metadata_writable(s)) {
        s.log("roll-back: the pool is read-only: what the interrupted change did to the metadata stays until a "
              "read-write start");
        return;
    }
    catalogue next = s.cat;
    bool changed = false;
    for (auto it = devs.begin(); it != devs.end();) {
        const dev_id id = it->first;
        const volume* pending = abandoned.find_id(id);
        if (!s.cat.find_id(id) && pending) {
            s.pool->message("delete " + std::to_string(id));
            s.log("roll-back: deleted device " + std::to_string(id) + ", created for volume " + pending->name +
                  " by the interrupted change");
            it = devs.erase(it);
        } else {
            ++it;
        }
    }
    for (const auto& v : s.cat.volumes) {
        if (devs.count(v.id)) continue;
        const volume* pending = abandoned.find(v.name);
        if (!pending || pending->id != v.id) {
            next.remove(v.name);
            changed = true;
            s.log("roll-back: volume " + v.name + " removed: the interrupted change had deleted its device " +
                  std::to_string(v.id));
        }
    }
    if (changed) apply_change(s, next, [] {});
}

// Devices only the metadata has become thin-<id>; entries without a device are reported.
void report_and_adopt_unknown(state& s, const std::map<dev_id, device_info>& devs) {
    catalogue next = s.cat;
    bool changed = false;
    for (const auto& [id, d] : devs) {
        if (s.cat.find_id(id)) continue;
        if (!metadata_writable(s)) {
            s.log("catalogue: device " + std::to_string(id) +
                  " is in the metadata but not in the catalogue (read-only pool: not added)");
            continue;
        }
        volume v{adopted_name(next, id), id, size_from_mappings(s, d), now(), std::nullopt};
        s.log("catalogue: device " + std::to_string(id) + " is in the metadata but not in the catalogue: added as volume " +
              v.name + " (" + human_size(v.size) + ")");
        next.add(v);
        changed = true;
    }
    for (const auto& v : s.cat.volumes)
        if (!devs.count(v.id))
            s.log("catalogue: volume " + v.name + " has no device " + std::to_string(v.id) +
                  " in the metadata: it cannot be used; `thinpool delete " + v.name + "` removes the entry");
    if (changed) apply_change(s, next, [] {});
}

} // namespace

void reconcile(state& s) {
    std::lock_guard lk(s.mutex);
    s.store.remove_stale_tmp();
    const std::uint64_t md_tid = s.pool->status_info(true).transaction_id;
    auto devs = metadata_devices(s);
    auto cur = s.store.load();
    auto prev = s.store.load_prev();

    if (!cur && !prev && devs.empty()) {
        s.cat = catalogue{md_tid, {}};
        s.store.commit(s.cat);
        s.log("catalogue: created " + s.store.path() + " (transaction " + std::to_string(md_tid) + ")");
    } else if (cur && cur->transaction_id == md_tid) {
        s.cat = *cur;
        s.log("catalogue: " + std::to_string(s.cat.volumes.size()) + " volumes, transaction " + std::to_string(md_tid) +
              " matches the metadata");
    } else if (cur && prev && prev->transaction_id == md_tid && cur->transaction_id == md_tid + 1) {
        s.store.roll_back();
        s.cat = *prev;
        s.log("catalogue: rolled back to transaction " + std::to_string(md_tid) +
              ": the daemon stopped between writing the catalogue for transaction " +
              std::to_string(cur->transaction_id) + " and committing it to the metadata (abandoned version kept as " +
              s.store.path() + ".rolled-back)");
        clean_up_interrupted(s, *cur, devs);
    } else if (s.opts.adopt) {
        s.cat = adopt(s, cur, prev, devs, md_tid);
    } else if (!cur) {
        throw startup_error("no catalogue " + s.store.path() + " but the metadata " + s.opts.metadata_path + " has " +
                            std::to_string(devs.size()) + " devices (transaction " + std::to_string(md_tid) +
                            "): start with --adopt to build one from the metadata");
    } else {
        refuse_mismatch(s, *cur, prev, md_tid);
    }
    report_and_adopt_unknown(s, devs);
}

void apply_change(state& s, catalogue next, const std::function<void()>& change) {
    const std::uint64_t tid = s.cat.transaction_id;
    next.transaction_id = tid + 1;
    s.store.commit(next);
    try {
        change();
    } catch (...) {
        // Refused before anything changed (the pool checks messages first): the old catalogue
        // is right again.
        try {
            s.store.roll_back();
        } catch (const std::exception& e) {
            s.log(std::string("catalogue: cannot restore the previous version (a restart will): ") + e.what());
        }
        throw;
    }
    try {
        s.pool->message("set_transaction_id " + std::to_string(tid) + " " + std::to_string(tid + 1));
    } catch (const std::exception& e) {
        s.cat = std::move(next);
        s.needs_restart = true;
        s.log(std::string("catalogue: the change is in the metadata but its transaction id could not be set (") +
              e.what() + "); further changes are refused until a restart reconciles the catalogue");
        throw command_error(EIO, std::string("the change was made but could not be recorded (") + e.what() +
                                     "); restart the daemon to reconcile the catalogue");
    }
    s.cat = std::move(next);
}

std::vector<dev_id> new_device_ids(state& s, std::size_t n) {
    std::set<dev_id> used;
    for (const auto& v : s.cat.volumes) used.insert(v.id);
    for (const auto& d : s.pool->devices(false)) used.insert(d.id);
    std::vector<dev_id> out;
    dev_id next = used.empty() ? 0 : *used.rbegin() + 1;
    while (out.size() < n && next <= MAX_DEV_ID) out.push_back(next++);
    for (dev_id id = 0; out.size() < n && id <= MAX_DEV_ID; ++id)
        if (!used.count(id) && std::find(out.begin(), out.end(), id) == out.end()) out.push_back(id);
    if (out.size() < n) throw command_error(ENOSPC, "no free thin device id left in the pool");
    return out;
}

} // namespace thin::daemon
