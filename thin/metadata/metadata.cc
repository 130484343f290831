#include "thin/metadata/metadata.h"

#include "persistent-data/btree/btree.h"
#include "persistent-data/btree/builder.h"
#include "persistent-data/space-maps/disk.h"
#include "persistent-data/space-maps/metadata.h"

#include <algorithm>
#include <cerrno>
#include <cstring>

namespace thin {

using namespace pdata;

void validate_data_block_size(std::uint32_t sectors) {
    if (sectors < MIN_DATA_BLOCK_SIZE || sectors > MAX_DATA_BLOCK_SIZE || sectors % MIN_DATA_BLOCK_SIZE)
        throw metadata_error(EINVAL, "invalid data block size " + std::to_string(sectors) +
                                         " sectors (must be a multiple of 128 between 128 and 2097152)");
}

metadata::metadata(std::shared_ptr<io_engine> engine, std::size_t cache_blocks, bool read_only)
    : engine_(std::move(engine)), bm_(std::make_unique<pdata::block_manager>(engine_, cache_blocks)),
      read_only_(read_only) {}

metadata::~metadata() = default;

void metadata::setup_infos() {
    space_map* data_sm = data_sm_.get();
    btree::value_type mapping_vt;
    mapping_vt.size = 8;
    mapping_vt.inc = [data_sm](const std::uint8_t* v, unsigned n) {
        for (unsigned i = 0; i < n; ++i) data_sm->inc(block_time::unpack(load_le64(v + 8 * i)).data_block);
    };
    mapping_vt.dec = [data_sm](const std::uint8_t* v, unsigned n) {
        for (unsigned i = 0; i < n; ++i) data_sm->dec(block_time::unpack(load_le64(v + 8 * i)).data_block);
    };
    mapping_vt.equal = [](const std::uint8_t* a, const std::uint8_t* b) {
        return block_time::unpack(load_le64(a)).data_block == block_time::unpack(load_le64(b)).data_block;
    };
    mapping_info_ = btree::info{tm_.get(), 2, mapping_vt};

    // The top level on its own: values are level-2 roots; losing one deletes that device's tree.
    btree::info level2{tm_.get(), 1, mapping_vt};
    pdata::transaction_manager* tm = tm_.get();
    btree::value_type top_vt;
    top_vt.size = 8;
    top_vt.inc = [tm](const std::uint8_t* v, unsigned n) {
        for (unsigned i = 0; i < n; ++i) tm->inc(load_le64(v + 8 * i));
    };
    top_vt.dec = [level2](const std::uint8_t* v, unsigned n) {
        for (unsigned i = 0; i < n; ++i) btree::del(level2, load_le64(v + 8 * i));
    };
    top_info_ = btree::info{tm_.get(), 1, top_vt};

    btree::value_type details_vt;
    details_vt.size = device_details::DISK_SIZE;
    details_info_ = btree::info{tm_.get(), 1, details_vt};
}

std::unique_ptr<metadata> metadata::format(std::shared_ptr<io_engine> engine, std::uint32_t data_block_size,
                                           block_address nr_data_blocks, std::size_t cache_blocks) {
    validate_data_block_size(data_block_size);
    if (nr_data_blocks > MAX_DATA_BLOCK + 1)
        throw metadata_error(EINVAL, "too many data blocks: " + std::to_string(nr_data_blocks));
    std::unique_ptr<metadata> md(new metadata(std::move(engine), cache_blocks, false));
    block_address nr_md = std::min<block_address>(md->bm_->nr_blocks(), MAX_METADATA_BLOCKS);
    md->md_sm_ = create_metadata_space_map(*md->bm_, nr_md);
    md->md_sm_->inc(SUPERBLOCK_LOCATION);
    md->tm_ = std::make_unique<pdata::transaction_manager>(*md->bm_, *md->md_sm_);
    md->data_sm_ = create_disk_space_map(*md->tm_, nr_data_blocks);
    md->setup_infos();

    superblock& sb = md->sb_;
    sb = superblock{};
    sb.data_block_size = data_block_size;
    sb.metadata_nr_blocks = nr_md;
    sb.data_mapping_root = btree::empty_tree(md->top_info_);
    sb.device_details_root = btree::empty_tree(md->details_info_);
    md->changed_ = true;
    md->commit();
    return md;
}

std::unique_ptr<metadata> metadata::open(std::shared_ptr<io_engine> engine, const open_options& opts) {
    std::string name = engine->name();
    if (engine->nr_blocks() == 0)
        throw metadata_error(EINVAL, name + ": metadata device is too small (less than one 4 KiB block)");
    {
        auto raw = make_aligned_block(false);
        engine->read(SUPERBLOCK_LOCATION, raw.get());
        if (block_is_all_zero(raw.get())) {
            if (!opts.format_if_unformatted)
                throw metadata_error(ENODATA, name + ": superblock is all zeros: the metadata is not formatted");
            if (opts.read_only)
                throw metadata_error(EPERM, name + ": cannot format metadata opened read-only");
            validate_data_block_size(opts.data_block_size);
            return format(std::move(engine), opts.data_block_size, opts.nr_data_blocks, opts.cache_blocks);
        }
    }
    std::unique_ptr<metadata> md(new metadata(std::move(engine), opts.cache_blocks, opts.read_only));
    md->load();
    const superblock& sb = md->sb_;
    if (sb.incompat_flags)
        throw metadata_error(EINVAL, name + ": superblock has unsupported incompatible features (incompat_flags " +
                                         std::to_string(sb.incompat_flags) + ")");
    if (!opts.read_only && sb.compat_ro_flags)
        throw metadata_error(EINVAL, name + ": superblock has unsupported features that forbid writing (compat_ro_flags " +
                                         std::to_string(sb.compat_ro_flags) + ")");
    if (opts.data_block_size && opts.data_block_size != sb.data_block_size)
        throw metadata_error(EINVAL, name + ": data block size " + std::to_string(opts.data_block_size) +
                                         " differs from the metadata's " + std::to_string(sb.data_block_size) +
                                         " sectors; changing the data block size is not supported");
    if (!opts.read_only && sb.needs_check() && !opts.ignore_needs_check)
        throw metadata_error(EINVAL, name + ": metadata has NEEDS_CHECK set: run thin_check (it can only be opened read-only)");
    return md;
}

void metadata::load() {
    read_ref r = bm_->read_lock(SUPERBLOCK_LOCATION, superblock_validator());
    sb_ = superblock::unpack(r.data());
    r.release();
    md_sm_ = open_metadata_space_map(*bm_, sb_.metadata_sm());
    tm_ = std::make_unique<pdata::transaction_manager>(*bm_, *md_sm_);
    data_sm_ = open_disk_space_map(*tm_, sb_.data_sm());
    setup_infos();
    devices_.clear();
    btree::iterate(details_info_, sb_.device_details_root, nullptr, [this](std::uint64_t k, const std::uint8_t* v) {
        devices_[k] = device_state{device_details::unpack(v), false};
        return true;
    });
    changed_ = false;
}

void metadata::check_writable() const {
    if (read_only_) throw metadata_error(EROFS, "metadata is open read-only");
}

metadata::device_state& metadata::dev(dev_id d) {
    auto it = devices_.find(d);
    if (it == devices_.end()) throw metadata_error(ENODATA, "thin device " + std::to_string(d) + " does not exist");
    return it->second;
}

const metadata::device_state& metadata::dev(dev_id d) const {
    auto it = devices_.find(d);
    if (it == devices_.end()) throw metadata_error(ENODATA, "thin device " + std::to_string(d) + " does not exist");
    return it->second;
}

void metadata::check_new_dev_id(dev_id d) const {
    if (d > MAX_DEV_ID)
        throw metadata_error(EINVAL, "device id " + std::to_string(d) + " is too large (the limit is 2^24 - 1)");
    if (devices_.count(d)) throw metadata_error(EEXIST, "thin device " + std::to_string(d) + " already exists");
}

// ---- devices ----

void metadata::create_thin(dev_id d) {
    check_writable();
    check_new_dev_id(d);
    btree::info level2{tm_.get(), 1, mapping_info_.vt};
    block_address root = btree::empty_tree(level2);
    std::uint8_t v[8];
    store_le64(v, root);
    sb_.data_mapping_root = btree::insert(top_info_, sb_.data_mapping_root, &d, v);
    device_details det;
    det.transaction_id = sb_.trans_id;
    det.creation_time = det.snapshotted_time = sb_.time;
    devices_[d] = device_state{det, true};
    changed_ = true;
}

void metadata::create_snap(dev_id d, dev_id origin) {
    check_writable();
    check_new_dev_id(d);
    device_state& o = dev(origin);
    if (sb_.time >= MAX_TIME)
        throw metadata_error(ENOSPC, "cannot create snapshot: the 24-bit snapshot time would overflow");
    std::uint8_t v[8];
    if (!btree::lookup(top_info_, sb_.data_mapping_root, &origin, v))
        throw corrupt_block(sb_.data_mapping_root,
                            "thin device " + std::to_string(origin) + " has details but no mapping tree");
    block_address origin_root = load_le64(v);
    tm_->inc(origin_root);  // both devices now share the origin's tree
    sb_.data_mapping_root = btree::insert(top_info_, sb_.data_mapping_root, &d, v);
    ++sb_.time;
    o.d.snapshotted_time = sb_.time;
    o.changed = true;
    device_details det;
    det.mapped_blocks = o.d.mapped_blocks;
    det.transaction_id = sb_.trans_id;
    det.creation_time = det.snapshotted_time = sb_.time;
    devices_[d] = device_state{det, true};
    changed_ = true;
}

void metadata::delete_device(dev_id d) {
    check_writable();
    dev(d);
    bool removed = false;
    sb_.data_mapping_root = btree::remove(top_info_, sb_.data_mapping_root, &d, &removed);
    sb_.device_details_root = btree::remove(details_info_, sb_.device_details_root, &d);
    devices_.erase(d);
    changed_ = true;
}

bool metadata::device_exists(dev_id d) const { return devices_.count(d) != 0; }

std::vector<dev_id> metadata::devices() const {
    std::vector<dev_id> r;
    for (auto& [id, s] : devices_) r.push_back(id);
    return r;
}

device_details metadata::details(dev_id d) const { return dev(d).d; }

bool metadata::device_changed(dev_id d) const { return dev(d).changed; }

// ---- mappings ----

std::optional<lookup_result> metadata::lookup(dev_id d, std::uint64_t vblock) const {
    const device_state& s = dev(d);
    std::uint64_t keys[2] = {d, vblock};
    std::uint8_t v[8];
    if (!btree::lookup(mapping_info_, sb_.data_mapping_root, keys, v)) return std::nullopt;
    block_time bt = block_time::unpack(load_le64(v));
    return lookup_result{bt.data_block, bt.time, s.d.snapshotted_time > bt.time};
}

lookup_status metadata::try_lookup(dev_id d, std::uint64_t vblock, lookup_result& out) const noexcept {
    auto it = devices_.find(d);
    if (it == devices_.end()) return lookup_status::would_block;
    std::uint64_t keys[2] = {d, vblock};
    std::uint8_t v[8];
    lookup_status s = btree::try_lookup(mapping_info_, sb_.data_mapping_root, keys, v);
    if (s == lookup_status::found) {
        block_time bt = block_time::unpack(load_le64(v));
        out = lookup_result{bt.data_block, bt.time, it->second.d.snapshotted_time > bt.time};
    }
    return s;
}

std::optional<metadata::mapping_at> metadata::lookup_next(dev_id d, std::uint64_t vblock) const {
    const device_state& s = dev(d);
    std::uint64_t keys[2] = {d, vblock};
    std::uint64_t k;
    std::uint8_t v[8];
    if (!btree::lookup_next(mapping_info_, sb_.data_mapping_root, keys, &k, v)) return std::nullopt;
    block_time bt = block_time::unpack(load_le64(v));
    return mapping_at{k, lookup_result{bt.data_block, bt.time, s.d.snapshotted_time > bt.time}};
}

void metadata::insert(dev_id d, std::uint64_t vblock, std::uint64_t data_block) {
    check_writable();
    device_state& s = dev(d);
    if (data_block >= data_sm_->nr_blocks())
        throw metadata_error(EINVAL, "data block " + std::to_string(data_block) + " is beyond the data device (" +
                                         std::to_string(data_sm_->nr_blocks()) + " blocks)");
    std::uint64_t keys[2] = {d, vblock};
    std::uint8_t v[8];
    store_le64(v, block_time{data_block, sb_.time}.pack());
    bool inserted = false;
    sb_.data_mapping_root = btree::insert(mapping_info_, sb_.data_mapping_root, keys, v, &inserted);
    if (inserted) ++s.d.mapped_blocks;
    s.changed = true;
    changed_ = true;
}

bool metadata::remove(dev_id d, std::uint64_t vblock) {
    check_writable();
    device_state& s = dev(d);
    std::uint64_t keys[2] = {d, vblock};
    bool removed = false;
    sb_.data_mapping_root = btree::remove(mapping_info_, sb_.data_mapping_root, keys, &removed);
    if (removed) {
        --s.d.mapped_blocks;
        s.changed = true;
        changed_ = true;
    }
    return removed;
}

std::uint64_t metadata::remove_range(dev_id d, std::uint64_t begin, std::uint64_t end) {
    check_writable();
    device_state& s = dev(d);
    if (begin >= end) return 0;
    std::uint64_t n = 0;
    sb_.data_mapping_root = btree::remove_range(mapping_info_, sb_.data_mapping_root, &d, begin, end, &n);
    if (n) {
        s.d.mapped_blocks -= std::min(n, s.d.mapped_blocks);
        s.changed = true;
        changed_ = true;
    }
    return n;
}

std::optional<std::uint64_t> metadata::highest_mapped(dev_id d) const {
    dev(d);
    std::uint64_t key;
    std::uint8_t v[8];
    if (!btree::lookup_last(mapping_info_, sb_.data_mapping_root, &d, &key, v)) return std::nullopt;
    return key;
}

void metadata::for_each_mapping(dev_id d, const std::function<bool(std::uint64_t, block_time)>& fn) const {
    dev(d);
    btree::iterate(mapping_info_, sb_.data_mapping_root, &d, [&](std::uint64_t k, const std::uint8_t* v) {
        return fn(k, block_time::unpack(load_le64(v)));
    });
}

// ---- data space ----

std::optional<std::uint64_t> metadata::alloc_data_block() {
    check_writable();
    auto b = data_sm_->new_block();
    if (b) changed_ = true;
    return b;
}

void metadata::inc_data_block(std::uint64_t b) {
    check_writable();
    data_sm_->inc(b);
}

void metadata::dec_data_block(std::uint64_t b) {
    check_writable();
    data_sm_->dec(b);
}

std::uint64_t metadata::nr_data_blocks() const { return data_sm_->nr_blocks(); }
std::uint64_t metadata::nr_free_data_blocks() const { return data_sm_->nr_free(); }
std::uint32_t metadata::data_block_ref_count(std::uint64_t b) const { return data_sm_->get_count(b); }

void metadata::resize_data(std::uint64_t new_nr) {
    check_writable();
    std::uint64_t cur = data_sm_->nr_blocks();
    if (new_nr < cur)
        throw metadata_error(EINVAL, "cannot reduce the data device from " + std::to_string(cur) + " to " +
                                         std::to_string(new_nr) + " blocks");
    if (new_nr > MAX_DATA_BLOCK + 1) throw metadata_error(EINVAL, "data device too large");
    if (new_nr == cur) return;
    data_sm_->extend(new_nr - cur);
    changed_ = true;
}

// ---- metadata space ----

block_address metadata::nr_metadata_blocks() const { return md_sm_->nr_blocks(); }
block_address metadata::nr_free_metadata_blocks() const { return md_sm_->nr_free(); }

block_address metadata::metadata_reserve() const {
    return std::min<block_address>(4096, md_sm_->nr_blocks() / 10);
}

block_address metadata::nr_free_metadata_beyond_reserve() const {
    block_address f = md_sm_->nr_free(), r = metadata_reserve();
    return f > r ? f - r : 0;
}

void metadata::resize_metadata() {
    check_writable();
    block_address now = std::min<block_address>(engine_->nr_blocks(), MAX_METADATA_BLOCKS);
    block_address cur = md_sm_->nr_blocks();
    if (now < cur)
        throw metadata_error(EINVAL, "metadata device shrank from " + std::to_string(cur) + " to " +
                                         std::to_string(now) + " blocks; shrinking is not supported");
    if (now == cur) return;
    md_sm_->extend(now - cur);
    sb_.metadata_nr_blocks = now;
    changed_ = true;
}

// ---- pool state ----

void metadata::set_transaction_id(std::uint64_t old_id, std::uint64_t new_id) {
    check_writable();
    if (old_id != sb_.trans_id)
        throw metadata_error(EINVAL, "mismatched transaction id: current " + std::to_string(sb_.trans_id) +
                                         ", expected " + std::to_string(old_id));
    sb_.trans_id = new_id;
    changed_ = true;
}

void metadata::set_needs_check() {
    check_writable();
    sb_.flags |= FLAG_NEEDS_CHECK;
    changed_ = true;
}

// ---- bulk restore ----

void metadata::set_restored_state(std::uint32_t time, std::uint64_t trans_id, std::uint32_t flags) {
    check_writable();
    if (flags & ~FLAG_NEEDS_CHECK)
        throw metadata_error(EINVAL, "unsupported superblock flags " + std::to_string(flags) +
                                         " (only bit 0, needs_check, is defined)");
    sb_.time = time;
    sb_.trans_id = trans_id;
    sb_.flags = flags;
    changed_ = true;
}

void metadata::install_devices(const std::vector<installed_device>& devs) {
    check_writable();
    if (!devices_.empty()) throw std::logic_error("install_devices: the pool already has devices");
    for (std::size_t i = 0; i < devs.size(); ++i) {
        if (devs[i].id > MAX_DEV_ID)
            throw metadata_error(EINVAL, "device id " + std::to_string(devs[i].id) +
                                             " is too large (the limit is 2^24 - 1)");
        if (i && devs[i].id <= devs[i - 1].id)
            throw std::invalid_argument("install_devices: device ids must be strictly ascending");
    }
    btree::builder top(*tm_, 8);
    btree::builder details(*tm_, device_details::DISK_SIZE);
    for (const auto& d : devs) {
        std::uint8_t v[device_details::DISK_SIZE];
        store_le64(v, d.root);
        top.push_back(d.id, v);
        d.details.pack(v);
        details.push_back(d.id, v);
    }
    // The empty trees made at format are single unshared leaves: del frees them.
    btree::del(top_info_, sb_.data_mapping_root);
    btree::del(details_info_, sb_.device_details_root);
    sb_.data_mapping_root = top.finish();
    sb_.device_details_root = details.finish();
    for (const auto& d : devs) devices_[d.id] = device_state{d.details, false};
    changed_ = true;
}

// ---- metadata snapshot ----

void metadata::reserve_metadata_snap() {
    check_writable();
    if (sb_.metadata_snap) throw metadata_error(EBUSY, "a metadata snapshot is already held (block " +
                                                           std::to_string(sb_.metadata_snap) + ")");
    changed_ = true;
    commit();
    // A copy of the committed superblock: same roots, space-map areas zeroed, its own location.
    superblock copy = sb_;
    copy.data_sm_root.fill(0);
    copy.metadata_sm_root.fill(0);
    copy.metadata_snap = 0;
    write_ref w = tm_->new_block(superblock_validator());
    copy.blocknr = w.location();
    copy.pack(w.data());
    block_address snap = w.location();
    w.release();
    tm_->inc(sb_.data_mapping_root);
    tm_->inc(sb_.device_details_root);
    sb_.metadata_snap = snap;
    changed_ = true;
}

void metadata::release_metadata_snap() {
    check_writable();
    block_address snap = sb_.metadata_snap;
    if (!snap) throw metadata_error(EINVAL, "no pool metadata snapshot found");
    superblock copy;
    {
        read_ref r = bm_->read_lock(snap, superblock_validator());
        copy = superblock::unpack(r.data());
    }
    sb_.metadata_snap = 0;
    btree::del(mapping_info_, copy.data_mapping_root);
    btree::del(details_info_, copy.device_details_root);
    tm_->dec(snap);
    changed_ = true;
}

// ---- transactions ----

void metadata::write_details() {
    for (auto& [id, s] : devices_) {
        if (!s.changed) continue;
        std::uint8_t v[device_details::DISK_SIZE];
        s.d.pack(v);
        dev_id key = id;
        sb_.device_details_root = btree::insert(details_info_, sb_.device_details_root, &key, v);
    }
}

void metadata::commit() {
    check_writable();
    if (!changed_) return;
    write_details();
    data_sm_->commit();
    md_sm_->commit();
    tm_->pre_commit();

    sb_.blocknr = SUPERBLOCK_LOCATION;
    sb_.set_data_sm(data_sm_->root());
    sb_.set_metadata_sm(md_sm_->root());
    write_ref w = bm_->write_lock_zero(SUPERBLOCK_LOCATION, superblock_validator());
    sb_.pack(w.data());
    tm_->commit(std::move(w));

    for (auto& [id, s] : devices_) s.changed = false;
    changed_ = false;
}

void metadata::abort() {
    tm_->abort();
    data_sm_.reset();
    tm_.reset();
    md_sm_.reset();
    bm_->invalidate_clean();
    load();
}

} // namespace thin
