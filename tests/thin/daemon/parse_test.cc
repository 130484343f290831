// Sizes, names, the protocol's word encoding, config files and the catalogue format.
#include "tests/support/reference_tools.h"
#include "thin/daemon/catalogue.h"
#include "thin/daemon/config.h"
#include "thin/daemon/json.h"
#include "thin/daemon/text.h"

#include <gtest/gtest.h>

#include <filesystem>

namespace td = thin::daemon;

namespace {

std::string error_of(const std::function<void()>& fn) {
    try {
        fn();
    } catch (const td::parse_error& e) {
        return e.what();
    }
    return "";
}

TEST(Size, AcceptsBytesAndBinarySuffixes) {
    EXPECT_EQ(td::parse_size("512", "size"), 512u);
    EXPECT_EQ(td::parse_size("4K", "size"), 4096u);
    EXPECT_EQ(td::parse_size("4k", "size"), 4096u);
    EXPECT_EQ(td::parse_size("1KiB", "size"), 1024u);
    EXPECT_EQ(td::parse_size("3M", "size"), 3ull << 20);
    EXPECT_EQ(td::parse_size("2G", "size"), 2ull << 30);
    EXPECT_EQ(td::parse_size("1T", "size"), 1ull << 40);
    EXPECT_EQ(td::parse_size("0", "size"), 0u);
}

TEST(Size, RejectsGarbageFractionsOverflowAndOddSizes) {
    for (const char* bad : {"", "abc", "1.5G", "-1", "4X", "K", " 4K", "4K ", "99999999999999999999"})
        EXPECT_NE(error_of([&] { td::parse_size(bad, "size"); }), "") << bad;
    EXPECT_NE(error_of([&] { td::parse_size("16777216T", "size"); }).find("too large"), std::string::npos);
    EXPECT_NE(error_of([&] { td::parse_size("1000", "size"); }).find("multiple of 512"), std::string::npos);
    EXPECT_EQ(td::parse_size("1000", "size", 0), 1000u);
}

TEST(Name, FollowsTheRules) {
    for (std::string good : {std::string("a"), std::string("vm1"), std::string("A.b_c-d"), std::string("0"),
                             std::string("x-"), std::string(64, 'n')})
        EXPECT_TRUE(td::valid_volume_name(good)) << good;
    for (std::string bad : {std::string(), std::string("-a"), std::string(".a"), std::string("a b"),
                            std::string("a/b"), std::string("é"), std::string(65, 'n'), std::string("a\nb")})
        EXPECT_FALSE(td::valid_volume_name(bad)) << bad;
    EXPECT_NE(error_of([] { td::check_volume_name("-x"); }).find("invalid volume name"), std::string::npos);
}

TEST(Words, RoundTripAnyBytes) {
    std::vector<std::string> words = {"create", "a b", "100%", "line\nbreak", "/path/ok", std::string("\x01\xff", 2)};
    std::string line = td::encode_words(words);
    EXPECT_EQ(line.find('\n'), std::string::npos);
    EXPECT_EQ(td::decode_words(line), words);
    EXPECT_EQ(td::encode_word("origin=/a b"), "origin=/a%20b");
}

TEST(Words, RejectBadEscapesAndEmptyWords) {
    for (const char* bad : {"%", "%4", "%zz", "a%", "", "a  b", " a", "a\tb"})
        EXPECT_NE(error_of([&] { td::decode_words(bad); }), "") << bad;
}

TEST(Time, IsoRoundTrip) {
    EXPECT_EQ(td::iso_time(0), "1970-01-01T00:00:00Z");
    EXPECT_EQ(td::parse_iso_time(td::iso_time(1718020800)), 1718020800);
    EXPECT_NE(error_of([] { td::parse_iso_time("2024-06-10 12:00:00"); }), "");
    EXPECT_EQ(td::log_timestamp().size(), 24u);
}

TEST(Json, EscapesAndNests) {
    td::json_writer j;
    j.begin_object().value("s", "a\"b\\c\n\x01").value("n", std::uint64_t(18446744073709551615ull));
    j.value("t", true).null("z").begin_array("a").end_array().begin_object("o").end_object().end_object();
    EXPECT_EQ(j.str(),
              "{\n  \"s\": \"a\\\"b\\\\c\\n\\u0001\",\n  \"n\": 18446744073709551615,\n  \"t\": true,\n"
              "  \"z\": null,\n  \"a\": [],\n  \"o\": {}\n}\n");
}

// ---- config ----

TEST(Config, ParsesEveryKeyWithCommentsAndBlankLines) {
    auto s = td::parse_config_text(
        "# a pool\n\n"
        "metadata = /dev/vg/meta\n"
        "data=/dev/vg/data\n"
        "  block_size = 128K  \n"
        "low_water_mark = 100\n"
        "features = skip_block_zeroing, no_discard_passdown\n"
        "socket = /run/thinpool.sock\n"
        "nbd_socket = /run/nbd.sock\n"
        "nbd_tcp = 127.0.0.1:10809\n"
        "no_space_timeout = 0\n"
        "data_size = 1G\n"
        "metadata_size = 32M\n"
        "read_only = no\n",
        "test.conf");
    EXPECT_EQ(*s.metadata, "/dev/vg/meta");
    EXPECT_EQ(*s.data, "/dev/vg/data");
    EXPECT_EQ(*s.block_size, 256u);
    EXPECT_EQ(*s.low_water_mark, 100u);
    EXPECT_EQ(s.features->size(), 2u);
    EXPECT_EQ(*s.socket, "/run/thinpool.sock");
    EXPECT_EQ(*s.nbd_tcp, "127.0.0.1:10809");
    EXPECT_EQ(s.no_space_timeout->count(), 0);
    EXPECT_EQ(*s.data_size, 1ull << 30);
    EXPECT_EQ(*s.metadata_size, 32ull << 20);
    EXPECT_FALSE(*s.read_only);
    auto o = td::resolve("/srv/pool", s);
    EXPECT_TRUE(o.features.skip_block_zeroing);
    EXPECT_TRUE(o.features.no_discard_passdown);
    EXPECT_EQ(o.socket_path, "/run/thinpool.sock");
}

TEST(Config, BadLinesNameFileAndLine) {
    struct bad_case {
        const char* text;
        const char* message;
    };
    for (auto c : std::vector<bad_case>{{"metadata = a\ncolour = blue\n", "test.conf:2: unknown key 'colour'"},
                                        {"\n\njust words\n", "test.conf:3: expected 'key = value'"},
                                        {"block_size = 4K\n", "test.conf:1: invalid block size"},
                                        {"block_size = 96K\n", "test.conf:1: invalid block size"},
                                        {"features = fast\n", "test.conf:1: unknown pool feature 'fast'"},
                                        {"low_water_mark = many\n", "test.conf:1: invalid low water mark"},
                                        {"nbd_tcp = localhost\n", "test.conf:1: invalid NBD TCP address"},
                                        {"nbd_tcp = h:99999\n", "test.conf:1: invalid NBD TCP address"},
                                        {"read_only = maybe\n", "test.conf:1: invalid read_only"},
                                        {" = x\n", "test.conf:1: missing key"},
                                        {"data =\n", "test.conf:1: data needs a value"}}) {
        std::string e = error_of([&] { td::parse_config_text(c.text, "test.conf"); });
        EXPECT_EQ(e.rfind(c.message, 0), 0u) << "got: " << e << "\nwanted: " << c.message;
    }
}

TEST(Config, LaterSourcesWinPerKey) {
    auto file = td::parse_config_text("low_water_mark = 5\nsocket = /a\n", "f");
    td::settings cli;
    cli.set("low_water_mark", "7");
    file.merge(cli);
    EXPECT_EQ(*file.low_water_mark, 7u);
    EXPECT_EQ(*file.socket, "/a");
}

TEST(Config, ReadsFilesAndNamesUnreadableOnes) {
    thinpool_test::scratch_dir dir;
    thinpool_test::write_file(dir.file("c.conf"), "low_water_mark = 3\n");
    EXPECT_EQ(*td::read_config_file(dir.file("c.conf")).low_water_mark, 3u);
    EXPECT_NE(error_of([&] { td::read_config_file(dir.file("missing.conf")); }).find("missing.conf: cannot read"),
              std::string::npos);
}

TEST(Config, DefaultsLiveInTheDirectory) {
    auto o = td::resolve("/srv/p", {});
    EXPECT_EQ(o.metadata_path, "/srv/p/metadata");
    EXPECT_EQ(o.data_path, "/srv/p/data");
    EXPECT_EQ(o.socket_path, "/srv/p/control.sock");
    EXPECT_EQ(o.nbd_socket_path, "/srv/p/nbd.sock");
    EXPECT_EQ(o.data_size, 16ull << 30);
    EXPECT_EQ(o.metadata_size, 64ull << 20);
    EXPECT_FALSE(o.block_size);
    td::settings same;
    same.metadata = "/x";
    same.data = "/x";
    EXPECT_NE(error_of([&] { td::resolve("/srv/p", same); }), "");
}

TEST(HostPort, SplitsIpv4Ipv6AndNames) {
    EXPECT_EQ(td::split_host_port("127.0.0.1:10809"), std::make_pair(std::string("127.0.0.1"), std::uint16_t(10809)));
    EXPECT_EQ(td::split_host_port("[::1]:1"), std::make_pair(std::string("::1"), std::uint16_t(1)));
    EXPECT_EQ(td::split_host_port("host:80").first, "host");
    for (const char* bad : {"", ":80", "host:", "host:0", "host:x"})
        EXPECT_NE(error_of([&] { td::split_host_port(bad); }), "") << bad;
}

// ---- catalogue ----

td::catalogue sample() {
    td::catalogue c;
    c.transaction_id = 9;
    c.add({"vm1", 0, 1ull << 30, 1718020800, std::nullopt});
    c.add({"base", 4, 512, 1718020801, std::string("/srv/images/my base.img")});
    return c;
}

TEST(Catalogue, RoundTripsAndKeepsNamesSorted) {
    auto c = sample();
    std::string text = td::format_catalogue(c);
    EXPECT_NE(text.find("volume base id=4 size=512 created=2024-06-10T12:00:01Z origin=/srv/images/my%20base.img\n"),
              std::string::npos)
        << text;
    EXPECT_LT(text.find("volume base"), text.find("volume vm1"));
    EXPECT_EQ(td::parse_catalogue(text, "c"), c);
}

TEST(Catalogue, RejectsMalformedFilesWithTheLine) {
    const std::string head = "thinpool-catalogue 1\ntransaction 1\n";
    struct bad_case {
        std::string text, message;
    };
    for (const auto& c : std::vector<bad_case>{
             {"transaction 1\n", "cat:1: not a thinpool catalogue"},
             {head + "volume a id=1 size=512 created=2024-06-10T12:00:00Z\nvolume a id=2 size=512 "
                     "created=2024-06-10T12:00:00Z\n",
              "cat:4: volume a listed twice"},
             {head + "volume a id=1 size=512 created=2024-06-10T12:00:00Z\nvolume b id=1 size=512 "
                     "created=2024-06-10T12:00:00Z\n",
              "cat:4: device id 1 used twice"},
             {head + "volume a id=1 size=100 created=2024-06-10T12:00:00Z\n", "cat:3: size 100 is not a multiple"},
             {head + "volume a id=1 size=512\n", "cat:3: volume a: needs id, size and created"},
             {head + "volume a id=16777216 size=512 created=2024-06-10T12:00:00Z\n", "cat:3: device id 16777216 out"},
             {head + "volume -a id=1 size=512 created=2024-06-10T12:00:00Z\n", "cat:3: invalid volume name"},
             {head + "volume a id=1 size=512 created=2024-06-10T12:00:00Z colour=red\n", "cat:3: unknown field"},
             {head + "transaction 2\n", "cat:3: expected one 'transaction N' line"},
             {head + "snapshot x\n", "cat:3: unknown line 'snapshot'"},
             {"thinpool-catalogue 1\n", "cat: incomplete catalogue"},
         }) {
        std::string e = error_of([&] { td::parse_catalogue(c.text, "cat"); });
        EXPECT_EQ(e.rfind(c.message, 0), 0u) << "got: " << e << "\nwanted: " << c.message;
    }
}

TEST(CatalogueStore, CommitKeepsThePreviousVersionAndRollsBack) {
    thinpool_test::scratch_dir dir;
    td::catalogue_store store(dir.path().string());
    EXPECT_FALSE(store.load());
    auto a = sample();
    store.commit(a);
    EXPECT_EQ(*store.load(), a);
    EXPECT_FALSE(store.load_prev());
    auto b = a;
    b.transaction_id = 10;
    b.remove("vm1");
    store.commit(b);
    EXPECT_EQ(*store.load(), b);
    EXPECT_EQ(*store.load_prev(), a);
    thinpool_test::write_file(dir.file("catalogue.tmp"), "half");
    store.remove_stale_tmp();
    EXPECT_FALSE(std::filesystem::exists(dir.file("catalogue.tmp")));
    store.roll_back();
    EXPECT_EQ(*store.load(), a);
    EXPECT_EQ(td::parse_catalogue(thinpool_test::read_file(dir.file("catalogue.rolled-back")), "x"), b);
}

} // namespace
