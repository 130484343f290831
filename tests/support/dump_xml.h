#pragma once
// thin_dump's XML of the metadata on an engine, in process (tests comparing a restore, a repair or
// the API's result with the XML they expect).
#include "thin/dump/dump.h"

#include "persistent-data/io_engine.h"

#include <memory>
#include <string>

namespace thinpool_test {

std::string dump_xml(std::shared_ptr<pdata::io_engine> engine, const thin::dump::dump_options& o = {});

} // namespace thinpool_test
