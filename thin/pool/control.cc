// The pool's control plane: activating thin devices, messages (pool.md §2), status (§3, §1.2),
// the table line (§1.1), live growth (§6) and closing.
#include "thin/pool/core.h"

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <charconv>

namespace thin::pool::detail {

namespace {

std::string lower(std::string_view s) {
    std::string r(s);
    for (char& ch : r) ch = char(std::tolower(static_cast<unsigned char>(ch)));
    return r;
}

bool parse_u64(const std::string& s, std::uint64_t& out) {
    if (s.empty()) return false;
    auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), out, 10);
    return ec == std::errc() && p == s.data() + s.size();
}

dev_id parse_dev_id(const std::string& s) {
    std::uint64_t v;
    if (!parse_u64(s, v) || v > MAX_DEV_ID)
        throw pool_error(EINVAL, "Message received with invalid device id: " + s);
    return v;
}

} // namespace

// ---- thin devices ------------------------------------------------------------------------------

std::shared_ptr<thin_device> pool_core::activate(dev_id id, std::uint64_t nr_sectors,
                                                 std::shared_ptr<data_device> origin, const std::string& origin_path) {
    std::lock_guard ml(message_mutex_);
    if (closing_.load()) throw pool_error(EIO, "the pool is closed");
    if (mode_.load() == pool_mode::fail) throw pool_error(EINVAL, "Couldn't open thin device, Pool is in fail mode");
    if (id > MAX_DEV_ID) throw pool_error(EINVAL, "Invalid device id");
    {
        std::lock_guard rl(registry_mutex_);
        if (active_.count(id)) throw pool_error(EBUSY, "thin device " + std::to_string(id) + " is already active");
    }
    {
        std::shared_lock lk(md_lock_);
        if (md_broken_.load() || !md_) throw pool_error(EINVAL, "Couldn't open thin device, Pool is in fail mode");
        if (!md_->device_exists(id)) throw pool_error(ENODATA, "Couldn't open thin internal device");
    }
    if (!origin && !origin_path.empty()) {
        try {
            data_device_options o;
            o.read_only = true;
            o.exclusive = false;
            origin = open_aio_data_device(origin_path, o);
        } catch (const std::exception& e) {
            throw pool_error(EINVAL, std::string("Error opening origin device: ") + e.what());
        }
    }
    auto t = std::make_shared<thin_impl>(shared_from_this(), id, nr_sectors, std::move(origin));
    std::lock_guard rl(registry_mutex_);
    active_[id] = active_thin{t.get(), t};
    return t;
}

void pool_core::unregister(thin_impl* tc) {
    std::lock_guard rl(registry_mutex_);
    auto it = active_.find(tc->id());
    if (it != active_.end() && it->second.raw == tc) active_.erase(it);
    registry_cv_.notify_all();
}

thin_status pool_core::thin_info(const thin_impl* tc) const {
    thin_status s;
    if (mode_.load() == pool_mode::fail) {
        s.fail = true;
        return s;
    }
    std::shared_lock lk(md_lock_);
    if (!md_ || md_broken_.load()) {
        s.fail = true;
        return s;
    }
    try {
        std::uint64_t mapped = md_->mapped_blocks(tc->id());
        s.mapped_sectors = mapped * bs_;
        if (auto h = md_->highest_mapped(tc->id())) s.highest_mapped_sector = (*h + 1) * bs_ - 1;
    } catch (const std::exception&) {
        s.fail = true;
    }
    return s;
}

// ---- messages (pool.md §2) --------------------------------------------------------------------

void pool_core::message(std::string_view msg) {
    std::lock_guard ml(message_mutex_);
    if (closing_.load()) throw pool_error(EIO, "the pool is closed");
    std::vector<std::string> args;
    std::size_t i = 0;
    while (i < msg.size()) {
        while (i < msg.size() && std::isspace(static_cast<unsigned char>(msg[i]))) ++i;
        std::size_t j = i;
        while (j < msg.size() && !std::isspace(static_cast<unsigned char>(msg[j]))) ++j;
        if (j > i) args.emplace_back(msg.substr(i, j - i));
        i = j;
    }
    pool_mode m = mode_.load();
    if (m == pool_mode::read_only || m == pool_mode::out_of_metadata_space || m == pool_mode::fail)
        throw pool_error(EOPNOTSUPP, "unable to service pool target messages in READ_ONLY or FAIL mode");
    if (args.empty()) throw pool_error(EINVAL, "Unrecognised thin pool target message received: ");
    args[0] = lower(args[0]);
    const std::string& name = args[0];
    auto need = [&](std::size_t n) {
        if (args.size() != n + 1)
            throw pool_error(EINVAL, "Incorrect number of arguments for '" + name + "' message: expected " +
                                         std::to_string(n) + ", got " + std::to_string(args.size() - 1));
    };
    if (name == "create_thin") {
        need(1);
        parse_dev_id(args[1]);
    } else if (name == "create_snap") {
        need(2);
        parse_dev_id(args[1]);
        parse_dev_id(args[2]);
    } else if (name == "delete") {
        need(1);
        dev_id id = parse_dev_id(args[1]);
        std::lock_guard rl(registry_mutex_);
        if (active_.count(id)) throw pool_error(EBUSY, "Deletion of thin device " + args[1] + " failed: device is active");
    } else if (name == "set_transaction_id") {
        need(2);
        std::uint64_t a, b;
        if (!parse_u64(args[1], a)) throw pool_error(EINVAL, "set_transaction_id message: Unrecognised id " + args[1] + ".");
        if (!parse_u64(args[2], b)) throw pool_error(EINVAL, "set_transaction_id message: Unrecognised new id " + args[2] + ".");
    } else if (name == "reserve_metadata_snap" || name == "release_metadata_snap") {
        need(0);
    } else {
        throw pool_error(EINVAL, "Unrecognised thin pool target message received: " + std::string(msg));
    }

    if (name == "create_snap") {
        // The origin must not change under the snapshot: hold its new requests back and let the
        // ones in flight (and their deferred work) finish (pool.md §5.8), under the registry lock
        // so the device cannot go away meanwhile.
        std::shared_ptr<thin_impl> t = active_for_quiesce(parse_dev_id(args[2]));
        if (t) t->quiesce();
        try {
            run_on_worker([&] { do_message(args); });
        } catch (...) {
            if (t) t->unquiesce();
            throw;
        }
        if (t) t->unquiesce();
        return;
    }
    run_on_worker([&] { do_message(args); });
}

std::shared_ptr<thin_impl> pool_core::active_for_quiesce(dev_id id) {
    std::unique_lock rl(registry_mutex_);
    for (;;) {
        auto it = active_.find(id);
        if (it == active_.end()) return nullptr;
        if (auto t = it->second.weak.lock()) return t;
        // Being destroyed: it is gone once its requests have drained.
        registry_cv_.wait(rl);
    }
}

// Several snapshots at one point in time: every active origin is quiesced before the first is
// taken, so no write lands between them; then one commit. Checked as a whole first, so a refusal
// changes nothing.
void pool_core::create_snapshots(const std::vector<std::pair<dev_id, dev_id>>& snaps) {
    std::lock_guard ml(message_mutex_);
    if (closing_.load()) throw pool_error(EIO, "the pool is closed");
    pool_mode m = mode_.load();
    if (m == pool_mode::read_only || m == pool_mode::out_of_metadata_space || m == pool_mode::fail)
        throw pool_error(EOPNOTSUPP, "unable to service pool target messages in READ_ONLY or FAIL mode");
    if (snaps.empty()) return;
    std::set<dev_id> new_ids, origins;
    {
        std::shared_lock lk(md_lock_);
        if (md_broken_.load() || !md_) throw pool_error(EIO, "the pool's metadata is unusable");
        for (auto [id, origin] : snaps) {
            if (id > MAX_DEV_ID || origin > MAX_DEV_ID) throw pool_error(EINVAL, "Invalid device id");
            if (md_->device_exists(id) || !new_ids.insert(id).second)
                throw pool_error(EEXIST, "Creation of new snapshot " + std::to_string(id) + " of device " +
                                             std::to_string(origin) + " failed: device " + std::to_string(id) +
                                             " already exists");
            origins.insert(origin);
        }
        for (dev_id origin : origins)
            if (new_ids.count(origin) || !md_->device_exists(origin))
                throw pool_error(ENODATA, "Creation of new snapshot of device " + std::to_string(origin) +
                                              " failed: no such device");
    }
    std::vector<std::shared_ptr<thin_impl>> quiesced;
    auto resume = [&] {
        for (auto& t : quiesced) t->unquiesce();
    };
    try {
        for (dev_id origin : origins)
            if (auto t = active_for_quiesce(origin)) {
                t->quiesce();
                quiesced.push_back(std::move(t));
            }
        run_on_worker([&] {
            for (std::size_t i = 0; i < snaps.size(); ++i) {
                std::vector<std::string> args{"create_snap", std::to_string(snaps[i].first),
                                              std::to_string(snaps[i].second)};
                do_message(args, i + 1 == snaps.size());
            }
        });
    } catch (...) {
        resume();
        throw;
    }
    resume();
}

// On the worker: the change, then a commit.
void pool_core::do_message(const std::vector<std::string>& args, bool commit) {
    pool_mode m = mode_.load();
    if (m == pool_mode::read_only || m == pool_mode::out_of_metadata_space || m == pool_mode::fail)
        throw pool_error(EOPNOTSUPP, "unable to service pool target messages in READ_ONLY or FAIL mode");
    const std::string& name = args[0];
    std::string failure;
    try {
        if (name == "create_thin") {
            failure = "Creation of new thinly-provisioned device with id " + args[1] + " failed";
            std::unique_lock lk(md_lock_);
            md_->create_thin(parse_dev_id(args[1]));
        } else if (name == "create_snap") {
            failure = "Creation of new snapshot " + args[1] + " of device " + args[2] + " failed";
            std::unique_lock lk(md_lock_);
            md_->create_snap(parse_dev_id(args[1]), parse_dev_id(args[2]));
        } else if (name == "delete") {
            failure = "Deletion of thin device " + args[1] + " failed";
            std::unique_lock lk(md_lock_);
            md_->delete_device(parse_dev_id(args[1]));
        } else if (name == "set_transaction_id") {
            failure = "Failed to change transaction id from " + args[1] + " to " + args[2];
            std::uint64_t a = std::stoull(args[1]), b = std::stoull(args[2]);
            std::unique_lock lk(md_lock_);
            md_->set_transaction_id(a, b);
        } else if (name == "reserve_metadata_snap") {
            failure = "dm_pool_reserve_metadata_snap failed";
            // It commits first: through the pool, so the data device is flushed before.
            if (!commit_now()) throw pool_error(EIO, failure + ": commit failed");
            std::unique_lock lk(md_lock_);
            with_pins_dropped([&] { md_->reserve_metadata_snap(); });
        } else if (name == "release_metadata_snap") {
            failure = "dm_pool_release_metadata_snap failed";
            std::unique_lock lk(md_lock_);
            md_->release_metadata_snap();
        }
    } catch (const pool_error&) {
        throw;
    } catch (const metadata_error& e) {
        throw pool_error(e.error_code(), failure + ": " + e.what());
    } catch (const pdata::no_space& e) {
        metadata_operation_failed(name, e.what());
        throw pool_error(ENOSPC, failure + ": " + e.what());
    } catch (const std::exception& e) {
        metadata_operation_failed(name, e.what());
        throw pool_error(EIO, failure + ": " + e.what());
    }
    if (commit && !commit_now()) throw pool_error(EIO, failure + ": commit failed");
}

// ---- status -------------------------------------------------------------------------------------

pool_status pool_core::fill_status() {
    pool_status s;
    s.mode = mode_.load();
    s.error_if_no_space = error_if_no_space_;
    s.ignore_discard = adjusted_.ignore_discard;
    s.discard_passdown = passdown();
    if (s.mode == pool_mode::fail || md_broken_.load()) return s;
    std::shared_lock lk(md_lock_);
    s.transaction_id = md_->transaction_id();
    std::uint64_t md_total = md_->nr_metadata_blocks();
    s.total_metadata_blocks = md_total;
    s.used_metadata_blocks = md_total - md_->nr_free_metadata_beyond_reserve();
    s.total_data_blocks = md_->nr_data_blocks();
    s.used_data_blocks = s.total_data_blocks - md_->nr_free_data_blocks();
    if (md_->metadata_snap()) s.held_metadata_root = md_->metadata_snap();
    s.needs_check = md_->needs_check();
    s.metadata_low_water_mark = std::min<std::uint64_t>(1024, md_total / 4);
    return s;
}

pool_status pool_core::status_info(bool no_flush) {
    if (closing_.load()) throw pool_error(EIO, "the pool is closed");
    pool_status s;
    run_on_worker([&] {
        if (!no_flush && writable_mode()) commit_now();
        s = fill_status();
    });
    return s;
}

std::string pool_core::status(bool no_flush) {
    pool_status s;
    try {
        s = status_info(no_flush);
    } catch (const std::exception&) {
        return "Error";
    }
    if (s.mode == pool_mode::fail) return "Fail";
    std::string r;
    r += std::to_string(s.transaction_id) + " ";
    r += std::to_string(s.used_metadata_blocks) + "/" + std::to_string(s.total_metadata_blocks) + " ";
    r += std::to_string(s.used_data_blocks) + "/" + std::to_string(s.total_data_blocks) + " ";
    r += (s.held_metadata_root ? std::to_string(*s.held_metadata_root) : std::string("-")) + " ";
    switch (s.mode) {
    case pool_mode::out_of_data_space: r += "out_of_data_space "; break;
    case pool_mode::read_only:
    case pool_mode::out_of_metadata_space: r += "ro "; break;
    default: r += "rw "; break;
    }
    if (s.ignore_discard) r += "ignore_discard ";
    else if (s.discard_passdown) r += "discard_passdown ";
    else r += "no_discard_passdown ";
    r += s.error_if_no_space ? "error_if_no_space " : "queue_if_no_space ";
    r += s.needs_check ? "needs_check " : "- ";
    r += std::to_string(s.metadata_low_water_mark) + " ";
    return r;
}

std::string pool_core::table() const {
    const pool_features& f = requested_;
    std::vector<const char*> words;
    if (f.skip_block_zeroing) words.push_back("skip_block_zeroing");
    if (f.ignore_discard) words.push_back("ignore_discard");
    if (f.no_discard_passdown) words.push_back("no_discard_passdown");
    if (f.read_only) words.push_back("read_only");
    if (f.error_if_no_space) words.push_back("error_if_no_space");
    std::string r = std::to_string(bs_) + " " + std::to_string(opts_.low_water_mark) + " " +
                    std::to_string(words.size()) + " ";
    for (const char* w : words) r += std::string(w) + " ";
    return r;
}

// ---- growth (pool.md §6 preresume) --------------------------------------------------------------

void pool_core::resize_data(std::optional<std::uint64_t> n) {
    std::lock_guard ml(message_mutex_);
    if (closing_.load()) throw pool_error(EIO, "the pool is closed");
    std::uint64_t sectors = data_->nr_sectors();
    std::uint64_t target = n.value_or(sectors / bs_);
    if (target > sectors / bs_)
        throw pool_error(EINVAL, "Data device (" + data_->name() + ") too small: " + std::to_string(target) +
                                     " blocks requested, the device holds " + std::to_string(sectors / bs_));
    run_on_worker([&] {
        if (mode_.load() == pool_mode::fail) return;  // errors swallowed: the pool only errors I/O
        std::uint64_t cur = md_->nr_data_blocks();
        if (target < cur)
            throw pool_error(EINVAL, "pool target (" + std::to_string(target) + " blocks) too small: expected " +
                                         std::to_string(cur));
        if (target > cur) {
            if (md_->needs_check()) throw pool_error(EPERM, "unable to grow the data device until repaired.");
            if (!writable_mode()) throw pool_error(EPERM, "unable to grow the data device in read-only mode.");
            log("growing the data device from " + std::to_string(cur) + " to " + std::to_string(target) + " blocks");
            try {
                std::unique_lock lk(md_lock_);
                md_->resize_data(target);
            } catch (const std::exception& e) {
                metadata_operation_failed("dm_pool_resize_data_dev", e.what());
                throw pool_error(EIO, std::string("growing the data device failed: ") + e.what());
            }
            commit_now();
        }
        // Like a resume: the low water mark may fire again, and space may be back.
        data_lwm_fired_ = false;
        check_for_data_space();
    });
}

void pool_core::resize_metadata() {
    std::lock_guard ml(message_mutex_);
    if (closing_.load()) throw pool_error(EIO, "the pool is closed");
    run_on_worker([&] {
        if (mode_.load() == pool_mode::fail) return;
        pdata::block_address now = std::min<pdata::block_address>(md_engine_->nr_blocks(), MAX_METADATA_BLOCKS);
        pdata::block_address cur = md_->nr_metadata_blocks();
        if (now < cur)
            throw pool_error(EINVAL, "metadata device (" + std::to_string(now) + " blocks) too small: expected " +
                                         std::to_string(cur));
        if (now > cur) {
            if (md_->needs_check()) throw pool_error(EPERM, "unable to grow the metadata device until repaired.");
            if (md_->read_only() || mode_.load() == pool_mode::read_only)
                throw pool_error(EPERM, "unable to grow the metadata device in read-only mode.");
            if (mode_.load() == pool_mode::out_of_metadata_space) set_mode(pool_mode::write);
            log("growing the metadata device from " + std::to_string(cur) + " to " + std::to_string(now) + " blocks");
            try {
                std::unique_lock lk(md_lock_);
                md_->resize_metadata();
            } catch (const std::exception& e) {
                metadata_operation_failed("dm_pool_resize_metadata_dev", e.what());
                throw pool_error(EIO, std::string("growing the metadata device failed: ") + e.what());
            }
            commit_now();
        }
        md_lwm_fired_ = false;
    });
}

void pool_core::commit() {
    if (closing_.load()) throw pool_error(EIO, "the pool is closed");
    run_on_worker([&] {
        pool_mode m = mode_.load();
        if (m == pool_mode::fail) throw pool_error(EIO, "the pool is in fail mode");
        if (!writable_mode()) return;  // nothing can have changed
        if (!commit_now()) throw pool_error(EIO, "commit failed");
    });
}

// ---- closing ------------------------------------------------------------------------------------

void pool_core::close() {
    std::lock_guard ml(message_mutex_);
    {
        std::lock_guard lk(lock_);
        if (!worker_running_ && !worker_.joinable()) return;
    }
    if (closing_.exchange(true) == false) {
        // Nothing new is accepted now; what is queued for space will not get any.
        try {
            run_on_worker([&] {
                no_more_retry_ = true;
                error_retry_list(-ENOSPC);
            });
        } catch (...) {
        }
        // Requests in flight drain.
        {
            std::unique_lock lk(requests_m_);
            requests_cv_.wait(lk, [&] { return requests_ == 0; });
        }
        try {
            run_on_worker([&] {
                if (writable_mode()) commit_now();
            });
        } catch (...) {
        }
    }
    {
        std::lock_guard lk(lock_);
        stop_ = true;
    }
    cv_.notify_all();
    if (worker_.joinable()) worker_.join();
    data_->drain();
    std::unique_lock lk(md_lock_);
    md_.reset();
    md_engine_.reset();
    release_md_claim();
}

} // namespace thin::pool::detail
