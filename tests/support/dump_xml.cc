#include "tests/support/dump_xml.h"

#include "thin/emit/xml_emitter.h"

#include "persistent-data/block_manager.h"

#include <sstream>

namespace thinpool_test {

std::string dump_xml(std::shared_ptr<pdata::io_engine> engine, const thin::dump::dump_options& o) {
    pdata::block_manager bm(engine, 64);
    std::ostringstream os;
    thin::emit::xml_emitter e(os);
    thin::dump::dump_metadata(bm, o, e);
    e.flush();
    return os.str();
}

} // namespace thinpool_test
