// thin/restore at the edges of its numbers: origin blocks up to 2^64-1, data blocks up to
// nr_data_blocks - 1, and nr_data_blocks up to what the format (2^40) and the output's room for
// the data space map (thin_repair's rule, repair/data_size.h) allow. The largest valid value is
// accepted and round-trips; one past it is refused with the line and column, and the output is
// left with a zeroed superblock.
#include "thin/dump/dump.h"
#include "thin/emit/xml_emitter.h"
#include "thin/metadata/metadata.h"
#include "thin/repair/data_size.h"
#include "thin/restore/restore.h"

#include "persistent-data/io_engine.h"

#include "tests/support/dump_xml.h"

#include <gtest/gtest.h>

#include <sstream>
#include <vector>

using namespace thin;
using pdata::memory_engine;

namespace {

constexpr std::uint64_t LAST = UINT64_MAX;  // the last origin block
constexpr std::uint64_t TWO_40 = std::uint64_t(1) << 40;

struct run {
    std::uint64_t origin, data, length;
};

// A document as thin_dump prints it: device i holds devices[i] (runs that do not merge), with
// the correct mapped_blocks.
std::string xml_of(std::uint64_t nr_data_blocks, const std::vector<std::vector<run>>& devices) {
    std::ostringstream x;
    x << "<superblock uuid=\"\" time=\"1\" transaction=\"3\" flags=\"0\" version=\"2\" data_block_size=\"128\" "
         "nr_data_blocks=\""
      << nr_data_blocks << "\">\n";
    for (std::size_t d = 0; d < devices.size(); ++d) {
        std::uint64_t mapped = 0;
        for (const run& r : devices[d]) mapped += r.length;
        x << "  <device dev_id=\"" << d << "\" mapped_blocks=\"" << mapped
          << "\" transaction=\"0\" creation_time=\"0\" snap_time=\"1\">\n";
        for (const run& r : devices[d]) {
            if (r.length == 1)
                x << "    <single_mapping origin_block=\"" << r.origin << "\" data_block=\"" << r.data
                  << "\" time=\"0\"/>\n";
            else
                x << "    <range_mapping origin_begin=\"" << r.origin << "\" data_begin=\"" << r.data
                  << "\" length=\"" << r.length << "\" time=\"0\"/>\n";
        }
        x << "  </device>\n";
    }
    x << "</superblock>\n";
    return x.str();
}

using thinpool_test::dump_xml;

// Restores xml into a fresh output of `blocks` blocks and dumps it back.
std::string round_trip(const std::string& xml, std::size_t blocks = 256, const restore::restore_options& o = {}) {
    auto engine = std::make_shared<memory_engine>(blocks);
    restore::restore_xml(xml, engine, o);
    return dump_xml(engine);
}

// The restore fails with exactly this problem at this line and column, and block 0 of an output
// that held valid metadata before is zero afterwards.
void expect_refused(const std::string& xml, std::uint64_t line, std::uint64_t column, const std::string& problem,
                    std::size_t blocks = 256, const restore::restore_options& o = {}) {
    auto engine = std::make_shared<memory_engine>(blocks);
    restore::restore_xml(xml_of(10, {{{0, 0, 1}}}), engine, {});
    ASSERT_FALSE(block_is_all_zero(engine->raw(0)));
    try {
        restore::restore_xml(xml, engine, o);
        ADD_FAILURE() << "restore succeeded; expected: " << problem;
    } catch (const restore::xml_error& e) {
        EXPECT_EQ(e.problem(), problem);
        EXPECT_EQ(e.line(), line) << e.what();
        EXPECT_EQ(e.column(), column) << e.what();
    } catch (const std::exception& e) {
        ADD_FAILURE() << "not an xml_error: " << e.what();
    }
    EXPECT_TRUE(block_is_all_zero(engine->raw(0)));
}

std::string room_problem(const std::string& what, std::uint64_t nr, std::uint64_t out_blocks) {
    return what + " " + std::to_string(nr) + " needs " + std::to_string(repair::data_space_map_blocks(nr)) +
           " metadata blocks for the data space map; the output memory (" + std::to_string(out_blocks) +
           " metadata blocks) has room for " + std::to_string(out_blocks - repair::fixed_output_blocks(out_blocks));
}

// The largest nr_data_blocks an output of out_blocks blocks can describe.
std::uint64_t largest_describable(std::uint64_t out_blocks) {
    std::uint64_t lo = 0, hi = TWO_40;  // output_describes(lo) holds, output_describes(hi) does not
    while (hi - lo > 1) {
        std::uint64_t mid = lo + (hi - lo) / 2;
        (repair::output_describes(mid, out_blocks) ? lo : hi) = mid;
    }
    return lo;
}

} // namespace

TEST(restore_limits, mappings_ending_at_the_last_origin_block_round_trip) {
    const std::string xml = xml_of(1000, {
                                             {{LAST - 3, 0, 3}, {LAST, 20, 1}},  // a range, then a single at 2^64-1
                                             {{LAST, 999, 1}},                   // the last data block too
                                             {{LAST - 2, 997, 3}},               // a range ending at both ends
                                         });
    EXPECT_EQ(round_trip(xml), xml);
}

TEST(restore_limits, a_run_past_the_last_origin_block_is_refused) {
    expect_refused(xml_of(1000, {{{LAST - 1, 0, 3}}}), 3, 5,
                   "range of 3 origin blocks from 18446744073709551614 goes past the last origin block, "
                   "18446744073709551615");
    expect_refused(xml_of(1000, {{{2, 0, LAST}}}), 3, 5,
                   "range of 18446744073709551615 origin blocks from 2 goes past the last origin block, "
                   "18446744073709551615");
    // From 1 the same run ends exactly at 2^64-1: only the data side (1000 blocks) refuses it.
    expect_refused(xml_of(1000, {{{1, 0, LAST}}}), 3, 5, "mapping beyond end of data device (1000 >= 1000)");
}

TEST(restore_limits, nothing_maps_after_the_last_origin_block) {
    // After block 2^64-1 the "next free origin block" would wrap to 0.
    expect_refused(xml_of(1000, {{{LAST, 0, 1}, {0, 1, 1}}}), 4, 5,
                   "mapping of origin block 0 is out of order or overlaps the previous one (origin blocks up to "
                   "18446744073709551615 are already mapped)");
    expect_refused(xml_of(1000, {{{LAST - 1, 0, 2}, {LAST, 5, 1}}}), 4, 5,
                   "mapping of origin block 18446744073709551615 is out of order or overlaps the previous one "
                   "(origin blocks up to 18446744073709551615 are already mapped)");
    // A new device starts afresh.
    const std::string xml = xml_of(1000, {{{LAST, 0, 1}}, {{0, 1, 1}}});
    EXPECT_EQ(round_trip(xml), xml);
}

TEST(restore_limits, data_blocks_stop_at_nr_data_blocks) {
    // Accepted up to nr_data_blocks - 1 (the round trip above maps 997..999 of 1000).
    expect_refused(xml_of(1000, {{{0, 1000, 1}}}), 3, 5, "mapping beyond end of data device (1000 >= 1000)");
    expect_refused(xml_of(1000, {{{0, 998, 3}}}), 3, 5, "mapping beyond end of data device (1000 >= 1000)");
    // data_begin + length would wrap 64 bits.
    expect_refused(xml_of(1000, {{{0, 5, LAST}}}), 3, 5, "mapping beyond end of data device (1000 >= 1000)");
    expect_refused(xml_of(1000, {{{0, LAST, 1}}}), 3, 5,
                   "mapping beyond end of data device (18446744073709551615 >= 1000)");
    expect_refused(xml_of(1000, {{{0, LAST - 1, 3}}}), 3, 5,
                   "mapping beyond end of data device (18446744073709551614 >= 1000)");
}

TEST(restore_limits, no_data_blocks) {
    const std::string empty = xml_of(0, {{}});
    EXPECT_EQ(round_trip(empty), empty);
    // As thin_restore 0.9.0 says it.
    expect_refused(xml_of(0, {{{0, 0, 1}}}), 3, 5, "mapping beyond end of data device (0 >= 0)");
}

TEST(restore_limits, nr_data_blocks_beyond_40_bits) {
    for (std::uint64_t nr : {TWO_40 + 1, LAST})
        expect_refused(xml_of(nr, {}), 1, 1,
                       "nr_data_blocks " + std::to_string(nr) + " is too large (data block numbers have 40 bits)");
    restore::restore_options o;
    o.nr_data_blocks = TWO_40 + 1;
    expect_refused(xml_of(10, {}), 1, 1, "--nr-data-blocks 1099511627777 is too large (data block numbers have 40 bits)",
                   256, o);
}

TEST(restore_limits, nr_data_blocks_beyond_the_outputs_room_fails_before_allocating) {
    // 2^40 blocks would take 256 GiB of counts in memory: refused before anything is allocated.
    for (std::uint64_t nr : {TWO_40, TWO_40 - 1})
        expect_refused(xml_of(nr, {{{0, 0, 1}}}), 1, 1, room_problem("nr_data_blocks", nr, 1024), 1024);
    restore::restore_options o;
    o.nr_data_blocks = TWO_40 - 1;
    expect_refused(xml_of(10, {}), 1, 1, room_problem("--nr-data-blocks", TWO_40 - 1, 1024), 1024, o);
}

TEST(restore_limits, the_largest_nr_data_blocks_the_output_describes) {
    const std::uint64_t nr = largest_describable(1024);
    ASSERT_GT(nr, 16000000u);  // about 1018 bitmaps of 16320 blocks
    const std::string xml = xml_of(nr, {{{0, nr - 1, 1}}});
    EXPECT_EQ(round_trip(xml, 1024), xml);
    expect_refused(xml_of(nr + 1, {{{0, nr, 1}}}), 1, 1, room_problem("nr_data_blocks", nr + 1, 1024), 1024);
}
