// thin/xml/xml_writer: byte-exact thin_dump 0.9.0 XML (tools.md §2.2).
#include "thin/xml/xml_writer.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <sstream>
#include <string>

using thin::xml_device_info;
using thin::xml_superblock_info;
using thin::xml_writer;

namespace {

xml_superblock_info sb(std::uint64_t nr_data_blocks = 1000) {
    xml_superblock_info s;
    s.time = 1;
    s.transaction = 3;
    s.flags = 0;
    s.version = 2;
    s.data_block_size = 128;
    s.nr_data_blocks = nr_data_blocks;
    return s;
}

const char* const HEADER =
    "<superblock uuid=\"\" time=\"1\" transaction=\"3\" flags=\"0\" version=\"2\" data_block_size=\"128\" "
    "nr_data_blocks=\"1000\">\n";
const char* const DEVICE0 =
    "  <device dev_id=\"0\" mapped_blocks=\"5\" transaction=\"0\" creation_time=\"0\" snap_time=\"1\">\n";

// Writes one device 0 with the given mappings and returns the lines between the device tags.
template <typename Fn>
std::string mappings_of(Fn&& fn) {
    std::ostringstream os;
    {
        xml_writer w(os);
        w.begin_superblock(sb());
        w.begin_device({0, 5, 0, 0, 1});
        fn(w);
        w.end_device();
        w.end_superblock();
    }
    std::string s = os.str();
    std::string head = std::string(HEADER) + DEVICE0;
    std::string tail = "  </device>\n</superblock>\n";
    EXPECT_EQ(s.substr(0, head.size()), head);
    EXPECT_EQ(s.substr(s.size() - tail.size()), tail);
    return s.substr(head.size(), s.size() - head.size() - tail.size());
}

} // namespace

TEST(xml_writer, reproduces_the_spec_example_byte_for_byte) {
    const std::string expected =
        "<superblock uuid=\"\" time=\"1\" transaction=\"3\" flags=\"0\" version=\"2\" data_block_size=\"128\" nr_data_blocks=\"1000\">\n"
        "  <device dev_id=\"0\" mapped_blocks=\"5\" transaction=\"0\" creation_time=\"0\" snap_time=\"1\">\n"
        "    <range_mapping origin_begin=\"0\" data_begin=\"0\" length=\"3\" time=\"0\"/>\n"
        "    <single_mapping origin_block=\"10\" data_block=\"20\" time=\"0\"/>\n"
        "    <single_mapping origin_block=\"11\" data_block=\"22\" time=\"1\"/>\n"
        "  </device>\n"
        "  <device dev_id=\"1\" mapped_blocks=\"3\" transaction=\"2\" creation_time=\"1\" snap_time=\"1\">\n"
        "    <range_mapping origin_begin=\"0\" data_begin=\"0\" length=\"3\" time=\"0\"/>\n"
        "  </device>\n"
        "</superblock>\n";
    std::ostringstream os;
    {
        xml_writer w(os);
        w.begin_superblock(sb());
        w.begin_device({0, 5, 0, 0, 1});
        w.map(0, 0, 0);
        w.map(1, 1, 0);
        w.map(2, 2, 0);
        w.map(10, 20, 0);
        w.map(11, 22, 1);
        w.end_device();
        w.begin_device({1, 3, 2, 1, 1});
        w.map(0, 0, 0);
        w.map(1, 1, 0);
        w.map(2, 2, 0);
        w.end_device();
        w.end_superblock();
    }
    EXPECT_EQ(os.str(), expected);
}

TEST(xml_writer, empty_device_prints_open_and_close_tags) {
    std::ostringstream os;
    {
        xml_writer w(os);
        w.begin_superblock(sb(0));
        w.begin_device({7, 0, 4, 2, 2});
        w.end_device();
        w.end_superblock();
    }
    EXPECT_EQ(os.str(),
              "<superblock uuid=\"\" time=\"1\" transaction=\"3\" flags=\"0\" version=\"2\" data_block_size=\"128\" nr_data_blocks=\"0\">\n"
              "  <device dev_id=\"7\" mapped_blocks=\"0\" transaction=\"4\" creation_time=\"2\" snap_time=\"2\">\n"
              "  </device>\n"
              "</superblock>\n");
}

TEST(xml_writer, empty_pool) {
    std::ostringstream os;
    {
        xml_writer w(os);
        w.begin_superblock(sb());
        w.end_superblock();
    }
    EXPECT_EQ(os.str(), std::string(HEADER) + "</superblock>\n");
}

TEST(xml_writer, runs_need_consecutive_virtual_and_data_blocks_and_one_time) {
    EXPECT_EQ(mappings_of([](xml_writer& w) {
                  w.map(5, 100, 3);
                  w.map(6, 101, 3);
                  w.map(7, 102, 3);  // run of 3
                  w.map(8, 104, 3);  // data gap
                  w.map(10, 105, 3); // virtual gap
                  w.map(11, 106, 4); // time change
                  w.map(12, 107, 4);
              }),
              "    <range_mapping origin_begin=\"5\" data_begin=\"100\" length=\"3\" time=\"3\"/>\n"
              "    <single_mapping origin_block=\"8\" data_block=\"104\" time=\"3\"/>\n"
              "    <single_mapping origin_block=\"10\" data_block=\"105\" time=\"3\"/>\n"
              "    <range_mapping origin_begin=\"11\" data_begin=\"106\" length=\"2\" time=\"4\"/>\n");
}

TEST(xml_writer, descending_data_blocks_do_not_merge) {
    EXPECT_EQ(mappings_of([](xml_writer& w) {
                  w.map(0, 9, 0);
                  w.map(1, 8, 0);
              }),
              "    <single_mapping origin_block=\"0\" data_block=\"9\" time=\"0\"/>\n"
              "    <single_mapping origin_block=\"1\" data_block=\"8\" time=\"0\"/>\n");
}

TEST(xml_writer, runs_never_cross_devices) {
    std::ostringstream os;
    {
        xml_writer w(os);
        w.begin_superblock(sb());
        w.begin_device({0, 1, 0, 0, 0});
        w.map(0, 0, 0);
        w.end_device();
        w.begin_device({1, 1, 0, 0, 0});
        w.map(1, 1, 0);
        w.end_device();
        w.end_superblock();
    }
    EXPECT_NE(os.str().find("<single_mapping origin_block=\"0\" data_block=\"0\" time=\"0\"/>\n  </device>\n"),
              std::string::npos);
    EXPECT_NE(os.str().find("<single_mapping origin_block=\"1\" data_block=\"1\" time=\"0\"/>\n  </device>\n"),
              std::string::npos);
}

TEST(xml_writer, map_range_merges_like_single_mappings) {
    EXPECT_EQ(mappings_of([](xml_writer& w) {
                  w.map(0, 10, 1);
                  w.map_range(1, 11, 4, 1);
                  w.map_range(5, 15, 2, 1);
                  w.map(7, 17, 1);
                  w.map_range(8, 50, 1, 1);
                  w.map_range(9, 0, 0, 1);  // empty: ignored
              }),
              "    <range_mapping origin_begin=\"0\" data_begin=\"10\" length=\"8\" time=\"1\"/>\n"
              "    <single_mapping origin_block=\"8\" data_block=\"50\" time=\"1\"/>\n");
}

TEST(xml_writer, large_values_and_many_mappings_through_a_file) {
    std::FILE* f = std::tmpfile();
    ASSERT_NE(f, nullptr);
    const std::uint64_t n = 200000;
    {
        xml_writer w(f);
        xml_superblock_info s = sb();
        s.time = 16777215;
        s.transaction = 18446744073709551615ull;
        s.flags = 1;
        s.nr_data_blocks = 1099511627776ull;
        w.begin_superblock(s);
        w.begin_device({16777215, n, 18446744073709551615ull, 4294967295u, 4294967295u});
        for (std::uint64_t i = 0; i < n; ++i)
            w.map(2 * i, 1099511627775ull - i, i % 2);  // nothing merges
        w.end_device();
        w.end_superblock();
        w.flush();
    }
    std::string out;
    std::rewind(f);
    char buf[65536];
    std::size_t got;
    while ((got = std::fread(buf, 1, sizeof buf, f)) > 0)
        out.append(buf, got);
    std::fclose(f);
    EXPECT_EQ(out.substr(0, out.find('\n') + 1),
              "<superblock uuid=\"\" time=\"16777215\" transaction=\"18446744073709551615\" flags=\"1\" "
              "version=\"2\" data_block_size=\"128\" nr_data_blocks=\"1099511627776\">\n");
    std::size_t lines = 0;
    for (char c : out)
        lines += c == '\n';
    EXPECT_EQ(lines, n + 4);
    EXPECT_NE(out.find("  <device dev_id=\"16777215\" mapped_blocks=\"200000\" transaction=\"18446744073709551615\" "
                       "creation_time=\"4294967295\" snap_time=\"4294967295\">\n"
                       "    <single_mapping origin_block=\"0\" data_block=\"1099511627775\" time=\"0\"/>\n"
                       "    <single_mapping origin_block=\"2\" data_block=\"1099511627774\" time=\"1\"/>\n"),
              std::string::npos);
    const std::string tail = "time=\"1\"/>\n  </device>\n</superblock>\n";
    EXPECT_EQ(out.substr(out.size() - tail.size()), tail);
}

TEST(xml_writer, uuid_is_escaped) {
    std::ostringstream os;
    {
        xml_writer w(os);
        xml_superblock_info s = sb();
        s.uuid = "a\"<&>";
        w.begin_superblock(s);
        w.end_superblock();
    }
    EXPECT_EQ(os.str().substr(0, 40), "<superblock uuid=\"a&quot;&lt;&amp;&gt;\" ");
}
