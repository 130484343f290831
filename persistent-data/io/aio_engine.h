#pragma once
// Details of the libaio engine beyond open_aio_engine() (declared in io_engine.h).
#include "persistent-data/io_engine.h"

namespace pdata {

// The aio engine without O_DIRECT, through the page cache: what open_aio_engine() falls back to
// when the file system refuses O_DIRECT. Exposed so the fallback path can be tested on file
// systems that do support O_DIRECT.
std::unique_ptr<io_engine> open_buffered_aio_engine(const std::string& path, open_options opts,
                                                    unsigned queue_depth = 64);

} // namespace pdata
