#include "thin/xml/xml_writer.h"

#include <charconv>
#include <cstring>
#include <ostream>
#include <stdexcept>

namespace thin {

xml_writer::xml_writer(std::ostream& out) : os_(&out) {}
xml_writer::xml_writer(std::FILE* out) : file_(out) {}

xml_writer::~xml_writer() {
    try {
        flush();
    } catch (...) {
    }
}

void xml_writer::flush() {
    if (used_) {
        if (os_) {
            os_->write(buf_, static_cast<std::streamsize>(used_));
            if (!*os_)
                failed_ = true;
        } else if (std::fwrite(buf_, 1, used_, file_) != used_) {
            failed_ = true;
        }
        used_ = 0;
    }
    if (os_)
        os_->flush();
    else if (file_ && std::fflush(file_) != 0)
        failed_ = true;
    if (failed_)
        throw std::runtime_error("writing XML output failed");
}

void xml_writer::reserve(std::size_t n) {
    if (BUFFER_SIZE - used_ >= n)
        return;
    std::size_t keep = used_;
    used_ = 0;
    if (os_) {
        os_->write(buf_, static_cast<std::streamsize>(keep));
        if (!*os_)
            failed_ = true;
    } else if (std::fwrite(buf_, 1, keep, file_) != keep) {
        failed_ = true;
    }
    if (failed_)
        throw std::runtime_error("writing XML output failed");
}

void xml_writer::put(std::string_view s) {
    if (s.size() > BUFFER_SIZE) {
        reserve(BUFFER_SIZE);
        for (std::size_t i = 0; i < s.size(); i += BUFFER_SIZE)
            put(s.substr(i, BUFFER_SIZE));
        return;
    }
    reserve(s.size());
    std::memcpy(buf_ + used_, s.data(), s.size());
    used_ += s.size();
}

void xml_writer::put_uint(std::uint64_t v) {
    reserve(20);
    auto r = std::to_chars(buf_ + used_, buf_ + BUFFER_SIZE, v);
    used_ = static_cast<std::size_t>(r.ptr - buf_);
}

void xml_writer::attr(std::string_view name, std::uint64_t v) {
    reserve(name.size() + 24);
    buf_[used_++] = ' ';
    std::memcpy(buf_ + used_, name.data(), name.size());
    used_ += name.size();
    buf_[used_++] = '=';
    buf_[used_++] = '"';
    auto r = std::to_chars(buf_ + used_, buf_ + BUFFER_SIZE, v);
    used_ = static_cast<std::size_t>(r.ptr - buf_);
    buf_[used_++] = '"';
}

void xml_writer::begin_superblock(const xml_superblock_info& sb) {
    put("<superblock uuid=\"");
    for (char c : sb.uuid) {
        switch (c) {
        case '&': put("&amp;"); break;
        case '<': put("&lt;"); break;
        case '>': put("&gt;"); break;
        case '"': put("&quot;"); break;
        default: put(std::string_view(&c, 1));
        }
    }
    put("\"");
    attr("time", sb.time);
    attr("transaction", sb.transaction);
    attr("flags", sb.flags);
    attr("version", sb.version);
    attr("data_block_size", sb.data_block_size);
    attr("nr_data_blocks", sb.nr_data_blocks);
    put(">\n");
}

void xml_writer::end_superblock() {
    flush_run();
    put("</superblock>\n");
}

void xml_writer::begin_device(const xml_device_info& dev) {
    flush_run();
    put("  <device");
    attr("dev_id", dev.dev_id);
    attr("mapped_blocks", dev.mapped_blocks);
    attr("transaction", dev.transaction);
    attr("creation_time", dev.creation_time);
    attr("snap_time", dev.snap_time);
    put(">\n");
}

void xml_writer::end_device() {
    flush_run();
    put("  </device>\n");
}

void xml_writer::map(std::uint64_t vblock, std::uint64_t data_block, std::uint32_t time) {
    if (in_run_ && vblock == run_vbegin_ + run_len_ && data_block == run_dbegin_ + run_len_ &&
        time == run_time_) {
        ++run_len_;
        return;
    }
    flush_run();
    in_run_ = true;
    run_vbegin_ = vblock;
    run_dbegin_ = data_block;
    run_len_ = 1;
    run_time_ = time;
}

void xml_writer::map_range(std::uint64_t vbegin, std::uint64_t dbegin, std::uint64_t len,
                           std::uint32_t time) {
    if (!len)
        return;
    if (in_run_ && vbegin == run_vbegin_ + run_len_ && dbegin == run_dbegin_ + run_len_ &&
        time == run_time_) {
        run_len_ += len;
        return;
    }
    flush_run();
    in_run_ = true;
    run_vbegin_ = vbegin;
    run_dbegin_ = dbegin;
    run_len_ = len;
    run_time_ = time;
}

void xml_writer::flush_run() {
    if (!in_run_)
        return;
    in_run_ = false;
    if (run_len_ == 1) {
        put("    <single_mapping");
        attr("origin_block", run_vbegin_);
        attr("data_block", run_dbegin_);
        attr("time", run_time_);
    } else {
        put("    <range_mapping");
        attr("origin_begin", run_vbegin_);
        attr("data_begin", run_dbegin_);
        attr("length", run_len_);
        attr("time", run_time_);
    }
    put("/>\n");
}

} // namespace thin
