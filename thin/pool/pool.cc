// The public face of the pool (pool.h): feature words, mode names, and a facade over the core
// that thin devices keep alive after the pool object itself is gone.
#include "thin/pool/core.h"

#include <algorithm>
#include <cctype>
#include <cerrno>

namespace thin::pool {

const char* to_string(pool_mode m) {
    switch (m) {
    case pool_mode::write: return "write";
    case pool_mode::out_of_data_space: return "out_of_data_space";
    case pool_mode::out_of_metadata_space: return "out_of_metadata_space";
    case pool_mode::read_only: return "read_only";
    case pool_mode::fail: return "fail";
    }
    return "unknown";
}

namespace {
bool iequals(std::string_view a, std::string_view b) {
    return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
               return std::tolower(static_cast<unsigned char>(x)) == std::tolower(static_cast<unsigned char>(y));
           });
}

class pool_impl : public pool {
public:
    explicit pool_impl(std::shared_ptr<detail::pool_core> c) : c_(std::move(c)) {}
    ~pool_impl() override { c_->close(); }

    std::shared_ptr<thin_device> activate(dev_id id, std::uint64_t nr_sectors,
                                          const std::string& external_origin) override {
        return c_->activate(id, nr_sectors, nullptr, external_origin);
    }
    std::shared_ptr<thin_device> activate(dev_id id, std::uint64_t nr_sectors,
                                          std::shared_ptr<data_device> external_origin) override {
        return c_->activate(id, nr_sectors, std::move(external_origin), {});
    }
    void message(std::string_view msg) override { c_->message(msg); }
    void create_snapshots(const std::vector<std::pair<dev_id, dev_id>>& snaps) override {
        c_->create_snapshots(snaps);
    }
    std::vector<device_info> devices(bool count_exclusive) override { return c_->devices(count_exclusive); }
    std::uint32_t data_block_size() const override { return c_->data_block_size(); }
    std::string status(bool no_flush) override { return c_->status(no_flush); }
    pool_status status_info(bool no_flush) override { return c_->status_info(no_flush); }
    std::string table() const override { return c_->table(); }
    pool_mode mode() const override { return c_->mode(); }
    void resize_data(std::optional<std::uint64_t> n) override { c_->resize_data(n); }
    void resize_metadata() override { c_->resize_metadata(); }
    void commit() override { c_->commit(); }
    void close() override { c_->close(); }
    std::uint64_t nr_commits() const override { return c_->nr_commits(); }

private:
    std::shared_ptr<detail::pool_core> c_;
};
} // namespace

void parse_feature(std::string_view w, pool_features& f) {
    if (iequals(w, "skip_block_zeroing")) f.skip_block_zeroing = true;
    else if (iequals(w, "ignore_discard")) f.ignore_discard = true;
    else if (iequals(w, "no_discard_passdown")) f.no_discard_passdown = true;
    else if (iequals(w, "read_only")) f.read_only = true;
    else if (iequals(w, "error_if_no_space")) f.error_if_no_space = true;
    else throw pool_error(EINVAL, "Unrecognised pool feature requested");
}

std::unique_ptr<pool> pool::open(const pool_options& opts) {
    return std::make_unique<pool_impl>(detail::pool_core::open(opts));
}

} // namespace thin::pool
