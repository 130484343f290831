// thin/nbd/handshake.cc through the server: every option path, byte by byte over a socketpair.
#include "tests/thin/nbd/raw_client.h"
#include "thin/nbd/limits.h"

#include <gtest/gtest.h>

using namespace nbd_test;
namespace limits = thin::nbd::limits;

namespace {

const std::uint32_t FIXED = proto::FLAG_C_FIXED_NEWSTYLE;

class handshake : public ::testing::Test {
protected:
    socketpair_server s;
};

TEST_F(handshake, greeting_offers_fixed_newstyle_and_no_zeroes) {
    raw_client c = s.connect();
    EXPECT_EQ(c.greeting(), proto::FLAG_FIXED_NEWSTYLE | proto::FLAG_NO_ZEROES);
}

TEST_F(handshake, unknown_client_flags_close_the_connection) {
    raw_client c = s.connect();
    c.greeting();
    c.client_flags(FIXED | 0x100);
    EXPECT_TRUE(c.closed_by_server());
    EXPECT_TRUE(s.served_done(0));
    EXPECT_TRUE(s.log.wait_for("unknown client flags 0x101"));
}

TEST_F(handshake, wrong_option_magic_closes_the_connection) {
    raw_client c = s.connect();
    c.start();
    bytes b;
    proto::packer(b).u64(0x1122334455667788).u32(proto::OPT_LIST).u32(0);
    c.send(b);
    EXPECT_TRUE(c.closed_by_server());
    EXPECT_TRUE(s.log.wait_for("bad option magic"));
}

TEST_F(handshake, list_names_every_export_with_its_description) {
    raw_client c = s.connect();
    c.start();
    auto replies = c.ask(proto::OPT_LIST);
    ASSERT_EQ(replies.size(), 4u);
    std::vector<std::string> got;
    for (std::size_t i = 0; i < 3; ++i) {
        ASSERT_EQ(replies[i].type, proto::REP_SERVER);
        proto::unpacker u(replies[i].data.data(), replies[i].data.size());
        std::string name = u.bytes(u.u32());
        got.push_back(name + "|" + u.bytes(u.remaining()));
    }
    EXPECT_EQ(got, (std::vector<std::string>{"broken|", "disk|the test disk", "ro|"}));
    EXPECT_EQ(replies[3].type, proto::REP_ACK);
}

TEST_F(handshake, list_with_data_is_invalid_and_the_session_goes_on) {
    raw_client c = s.connect();
    c.start();
    EXPECT_EQ(c.ask(proto::OPT_LIST, {1, 2, 3}).back().type, proto::REP_ERR_INVALID);
    EXPECT_EQ(c.ask(proto::OPT_LIST).back().type, proto::REP_ACK);
}

TEST_F(handshake, info_reports_size_flags_name_description_and_block_sizes) {
    raw_client c = s.connect();
    c.start();
    auto replies = c.ask(proto::OPT_INFO, raw_client::info_request("disk", {proto::INFO_NAME, proto::INFO_DESCRIPTION}));
    auto e = raw_client::parse_infos(replies);
    ASSERT_TRUE(e.ok);
    EXPECT_EQ(e.size, 8u << 20);
    std::uint16_t want = proto::FLAG_HAS_FLAGS | proto::FLAG_SEND_FLUSH | proto::FLAG_SEND_FUA | proto::FLAG_SEND_TRIM |
                         proto::FLAG_SEND_WRITE_ZEROES | proto::FLAG_SEND_FAST_ZERO | proto::FLAG_CAN_MULTI_CONN;
    EXPECT_EQ(e.flags, want);  // no SEND_DF: structured replies were not negotiated
    EXPECT_EQ(e.min_block, 512u);
    EXPECT_EQ(e.pref_block, 64u * 1024);
    EXPECT_EQ(e.max_block, 32u << 20);
    std::vector<std::string> texts;
    for (const auto& r : replies) {
        proto::unpacker u(r.data.data(), r.data.size());
        std::uint16_t t = u.u16();
        if (r.type == proto::REP_INFO && (t == proto::INFO_NAME || t == proto::INFO_DESCRIPTION))
            texts.push_back(std::to_string(t) + ":" + u.bytes(u.remaining()));
    }
    EXPECT_EQ(texts, (std::vector<std::string>{"1:disk", "2:the test disk"}));
    // INFO does not end the handshake, and leaves the export unreferenced.
    EXPECT_EQ(c.ask(proto::OPT_LIST).back().type, proto::REP_ACK);
    EXPECT_EQ(s.disk.use_count(), 2);  // the fixture and the provider
}

TEST_F(handshake, info_on_read_only_export_says_so_and_offers_no_writes) {
    raw_client c = s.connect();
    c.start();
    EXPECT_EQ(c.ask(proto::OPT_STRUCTURED_REPLY).back().type, proto::REP_ACK);
    auto e = raw_client::parse_infos(c.ask(proto::OPT_INFO, raw_client::info_request("ro")));
    ASSERT_TRUE(e.ok);
    EXPECT_EQ(e.size, 1u << 20);
    EXPECT_EQ(e.flags, proto::FLAG_HAS_FLAGS | proto::FLAG_READ_ONLY | proto::FLAG_SEND_FLUSH | proto::FLAG_SEND_FUA |
                           proto::FLAG_SEND_DF | proto::FLAG_CAN_MULTI_CONN);
}

TEST_F(handshake, server_wide_read_only_marks_every_export) {
    socketpair_server ro_server({.read_only = true});
    raw_client c = ro_server.connect();
    c.start();
    auto e = raw_client::parse_infos(c.ask(proto::OPT_INFO, raw_client::info_request("disk")));
    EXPECT_TRUE(e.flags & proto::FLAG_READ_ONLY);
}

TEST_F(handshake, preferred_block_size_is_a_power_of_two_within_the_maximum) {
    // A 192 KiB pool block is advertised as 128 KiB; a 1 GiB one as the 1 MiB maximum.
    s.provider->add("odd", "", std::make_shared<memory_export>(memory_export::options{.size = 1 << 20, .block = 192 * 1024}));
    s.provider->add("huge", "", std::make_shared<memory_export>(memory_export::options{.size = 1 << 20, .block = 1u << 30}));
    raw_client c = s.connect();
    c.start();
    EXPECT_EQ(raw_client::parse_infos(c.ask(proto::OPT_INFO, raw_client::info_request("odd"))).pref_block, 128u * 1024);
    EXPECT_EQ(raw_client::parse_infos(c.ask(proto::OPT_INFO, raw_client::info_request("huge"))).pref_block, 32u << 20);
}

TEST_F(handshake, maximum_block_size_is_a_multiple_of_512) {
    socketpair_server odd({.max_request_bytes = (1 << 20) + 100});
    raw_client c = odd.connect();
    c.start();
    auto e = raw_client::parse_infos(c.ask(proto::OPT_INFO, raw_client::info_request("disk")));
    EXPECT_EQ(e.max_block, 1u << 20);
    EXPECT_EQ(e.pref_block, 64u * 1024);
}

TEST_F(handshake, go_unknown_export_is_an_error_then_go_known_works) {
    raw_client c = s.connect();
    c.start();
    auto r = c.ask(proto::OPT_GO, raw_client::info_request("nope"));
    ASSERT_EQ(r.size(), 1u);
    EXPECT_EQ(r[0].type, proto::REP_ERR_UNKNOWN);
    EXPECT_NE(r[0].text().find("unknown export 'nope'"), std::string::npos);
    auto e = raw_client::parse_infos(c.ask(proto::OPT_GO, raw_client::info_request("disk")));
    ASSERT_TRUE(e.ok);
    EXPECT_EQ(c.read(0, 512), bytes(512, 0));
    EXPECT_TRUE(s.log.wait_for("opened export 'disk' (read-write, simple replies)"));
}

TEST_F(handshake, go_on_an_export_that_fails_to_open_carries_its_message) {
    raw_client c = s.connect();
    c.start();
    auto r = c.ask(proto::OPT_GO, raw_client::info_request("broken"));
    ASSERT_EQ(r.size(), 1u);
    EXPECT_TRUE(r[0].type & proto::REP_FLAG_ERROR);
    EXPECT_NE(r[0].text().find("volume is in fail mode"), std::string::npos) << r[0].text();
}

TEST_F(handshake, malformed_go_is_invalid) {
    raw_client c = s.connect();
    c.start();
    bytes b;
    proto::packer(b).u32(100).bytes("disk").u16(0);  // name length beyond the data
    EXPECT_EQ(c.ask(proto::OPT_GO, b).back().type, proto::REP_ERR_INVALID);
    b.clear();
    proto::packer(b).u32(4).bytes("disk").u16(3).u16(1);  // three info requests announced, one sent
    EXPECT_EQ(c.ask(proto::OPT_INFO, b).back().type, proto::REP_ERR_INVALID);
    EXPECT_EQ(c.ask(proto::OPT_GO, {0, 0}).back().type, proto::REP_ERR_INVALID);
}

TEST_F(handshake, export_name_sends_size_flags_and_zeroes_unless_no_zeroes) {
    for (bool no_zeroes : {false, true}) {
        raw_client c = s.connect();
        c.start(FIXED | (no_zeroes ? proto::FLAG_C_NO_ZEROES : 0));
        c.option(proto::OPT_EXPORT_NAME, {'d', 'i', 's', 'k'});
        bytes r = c.recv_bytes(10 + (no_zeroes ? 0 : 124));
        ASSERT_FALSE(r.empty());
        proto::unpacker u(r.data(), r.size());
        EXPECT_EQ(u.u64(), 8u << 20);
        EXPECT_TRUE(u.u16() & proto::FLAG_SEND_TRIM);
        EXPECT_TRUE(std::all_of(r.begin() + 10, r.end(), [](std::uint8_t b) { return b == 0; }));
        // Straight into transmission: the next bytes are a reply.
        EXPECT_EQ(c.write(4096, pattern(4096, 9)), 0u);
        EXPECT_EQ(c.read(4096, 4096), pattern(4096, 9));
    }
}

TEST_F(handshake, export_name_works_for_clients_without_fixed_newstyle) {
    raw_client c = s.connect();
    c.start(0);
    c.option(proto::OPT_EXPORT_NAME, {'r', 'o'});
    ASSERT_EQ(c.recv_bytes(10 + 124).size(), 134u);
    EXPECT_EQ(c.read(0, 512), bytes(512, 0));
}

TEST_F(handshake, other_options_need_fixed_newstyle) {
    raw_client c = s.connect();
    c.start(0);
    c.option(proto::OPT_LIST);
    EXPECT_TRUE(c.closed_by_server());
}

TEST_F(handshake, export_name_of_unknown_or_broken_export_hangs_up) {
    for (std::string name : {"nope", "broken"}) {
        raw_client c = s.connect();
        c.start();
        c.option(proto::OPT_EXPORT_NAME, bytes(name.begin(), name.end()));
        EXPECT_TRUE(c.closed_by_server()) << name;
    }
    EXPECT_TRUE(s.log.wait_for("unknown export 'nope' (NBD_OPT_EXPORT_NAME)"));
    EXPECT_TRUE(s.log.wait_for("volume is in fail mode"));
}

TEST_F(handshake, abort_is_acknowledged_then_closed) {
    raw_client c = s.connect();
    c.start();
    auto r = c.ask(proto::OPT_ABORT);
    EXPECT_EQ(r.back().type, proto::REP_ACK);
    EXPECT_TRUE(c.closed_by_server());
    EXPECT_TRUE(s.served_done(0));
    EXPECT_TRUE(s.log.wait_for("client aborted"));
}

TEST_F(handshake, starttls_is_refused_by_policy) {
    raw_client c = s.connect();
    c.start();
    EXPECT_EQ(c.ask(proto::OPT_STARTTLS).back().type, proto::REP_ERR_POLICY);
    EXPECT_EQ(c.ask(proto::OPT_LIST).back().type, proto::REP_ACK);
}

TEST_F(handshake, unknown_options_and_extended_headers_are_unsupported) {
    raw_client c = s.connect();
    c.start();
    EXPECT_EQ(c.ask(99, {1, 2}).back().type, proto::REP_ERR_UNSUP);
    EXPECT_EQ(c.ask(proto::OPT_EXTENDED_HEADERS).back().type, proto::REP_ERR_UNSUP);
    EXPECT_EQ(c.ask(4 /* NBD_OPT_PEEK_EXPORT */).back().type, proto::REP_ERR_UNSUP);
    EXPECT_EQ(c.ask(proto::OPT_LIST).back().type, proto::REP_ACK);
}

TEST_F(handshake, oversized_option_is_refused_and_the_session_goes_on) {
    raw_client c = s.connect();
    c.start();
    EXPECT_EQ(c.ask(proto::OPT_INFO, bytes(100 * 1024, 'x')).back().type, proto::REP_ERR_TOO_BIG);
    EXPECT_EQ(c.ask(proto::OPT_LIST).back().type, proto::REP_ACK);
    EXPECT_TRUE(s.log.wait_for("refused as too large"));
}

TEST_F(handshake, option_too_large_to_skip_ends_the_connection) {
    raw_client c = s.connect();
    c.start();
    bytes b;
    proto::packer(b).u64(proto::IHAVEOPT).u32(proto::OPT_GO).u32(0x7fffffff);
    c.send(b);
    EXPECT_EQ(c.read_option_reply().type, proto::REP_ERR_TOO_BIG);
    EXPECT_TRUE(c.closed_by_server());
}

TEST_F(handshake, long_export_name_is_too_big) {
    raw_client c = s.connect();
    c.start();
    EXPECT_EQ(c.ask(proto::OPT_GO, raw_client::info_request(std::string(5000, 'n'))).back().type, proto::REP_ERR_TOO_BIG);
}

TEST_F(handshake, structured_reply_with_data_is_invalid) {
    raw_client c = s.connect();
    c.start();
    EXPECT_EQ(c.ask(proto::OPT_STRUCTURED_REPLY, {0}).back().type, proto::REP_ERR_INVALID);
    EXPECT_EQ(c.ask(proto::OPT_STRUCTURED_REPLY).back().type, proto::REP_ACK);
}

TEST_F(handshake, structured_replies_add_send_df) {
    raw_client c = s.connect();
    auto e = c.go("disk", true, false);
    EXPECT_TRUE(e.flags & proto::FLAG_SEND_DF);
}

TEST_F(handshake, meta_contexts_list_and_set) {
    raw_client c = s.connect();
    c.start();
    // SET needs structured replies first; LIST does not.
    EXPECT_EQ(c.ask(proto::OPT_SET_META_CONTEXT, raw_client::meta_request("disk", {"base:allocation"})).back().type,
              proto::REP_ERR_INVALID);
    auto listed = c.ask(proto::OPT_LIST_META_CONTEXT, raw_client::meta_request("disk", {}));
    ASSERT_EQ(listed.size(), 2u);
    EXPECT_EQ(listed[0].type, proto::REP_META_CONTEXT);
    EXPECT_EQ(listed[0].data, (bytes{0, 0, 0, 0, 'b', 'a', 's', 'e', ':', 'a', 'l', 'l', 'o', 'c', 'a', 't', 'i', 'o', 'n'}));
    EXPECT_EQ(c.ask(proto::OPT_LIST_META_CONTEXT, raw_client::meta_request("disk", {"base:"})).size(), 2u);
    EXPECT_EQ(c.ask(proto::OPT_LIST_META_CONTEXT, raw_client::meta_request("disk", {"qemu:dirty-bitmap:x"})).size(), 1u);

    EXPECT_EQ(c.ask(proto::OPT_STRUCTURED_REPLY).back().type, proto::REP_ACK);
    auto set = c.ask(proto::OPT_SET_META_CONTEXT, raw_client::meta_request("disk", {"x-foo:bar", "base:allocation"}));
    ASSERT_EQ(set.size(), 2u);
    EXPECT_EQ(set[0].type, proto::REP_META_CONTEXT);
    EXPECT_EQ(proto::unpacker(set[0].data.data(), 4).u32(), 1u);
    // The "base:" wildcard selects nothing.
    EXPECT_EQ(c.ask(proto::OPT_SET_META_CONTEXT, raw_client::meta_request("disk", {"base:"})).size(), 1u);
}

TEST_F(handshake, malformed_meta_context_requests_are_invalid) {
    raw_client c = s.connect();
    c.start();
    EXPECT_EQ(c.ask(proto::OPT_STRUCTURED_REPLY).back().type, proto::REP_ACK);
    bytes b = raw_client::meta_request("disk", {"base:allocation"});
    b.pop_back();
    EXPECT_EQ(c.ask(proto::OPT_SET_META_CONTEXT, b).back().type, proto::REP_ERR_INVALID);
    b.clear();
    proto::packer(b).u32(4).bytes("disk").u32(0xffffffff);  // four billion queries, none sent
    EXPECT_EQ(c.ask(proto::OPT_LIST_META_CONTEXT, b).back().type, proto::REP_ERR_INVALID);
    EXPECT_EQ(c.ask(proto::OPT_SET_META_CONTEXT, raw_client::meta_request("disk", {std::string(5000, 'q')})).back().type,
              proto::REP_ERR_TOO_BIG);
}

TEST_F(handshake, block_status_needs_the_context_set_for_the_same_export) {
    raw_client c = s.connect();
    c.start();
    EXPECT_EQ(c.ask(proto::OPT_STRUCTURED_REPLY).back().type, proto::REP_ACK);
    EXPECT_EQ(c.ask(proto::OPT_SET_META_CONTEXT, raw_client::meta_request("ro", {"base:allocation"})).back().type,
              proto::REP_ACK);
    ASSERT_TRUE(raw_client::parse_infos(c.ask(proto::OPT_GO, raw_client::info_request("disk"))).ok);
    std::uint32_t err = 0;
    c.block_status(0, 4096, 0, &err);
    EXPECT_EQ(err, proto::NBD_EINVAL);
}

TEST_F(handshake, truncated_handshake_ends_quietly) {
    raw_client c = s.connect();
    c.start();
    bytes b;
    proto::packer(b).u64(proto::IHAVEOPT).u32(proto::OPT_GO).u32(40).u32(4);  // 4 of 40 bytes
    c.send(b);
    c.close();
    EXPECT_TRUE(s.served_done(0));
    EXPECT_TRUE(s.log.wait_for("closed during handshake: handshake closed by peer"));
    EXPECT_EQ(s.srv->connections(), 0u);
}

TEST_F(handshake, silent_client_is_dropped_after_the_handshake_timeout) {
    auto saved = limits::handshake_timeout();
    limits::set_handshake_timeout(std::chrono::milliseconds(200));
    raw_client c = s.connect();
    c.greeting();  // and then nothing
    EXPECT_TRUE(s.served_done(0));
    EXPECT_TRUE(c.closed_by_server());
    EXPECT_TRUE(s.log.wait_for("handshake not finished within 200 ms"));
    limits::set_handshake_timeout(saved);
}

TEST_F(handshake, slow_trickle_of_options_cannot_outlast_the_timeout) {
    auto saved = limits::handshake_timeout();
    limits::set_handshake_timeout(std::chrono::milliseconds(300));
    raw_client c = s.connect();
    c.start();
    // Keep the handshake busy with valid options until the server gives up.
    auto give_up = std::chrono::steady_clock::now() + DEADLINE;
    bool closed = false;
    while (!closed && std::chrono::steady_clock::now() < give_up) {
        bytes b;
        proto::packer(b).u64(proto::IHAVEOPT).u32(proto::OPT_LIST).u32(0);
        closed = !c.send_quiet(b);
        option_reply r;
        while (!closed) {
            closed = !c.try_read_option_reply(r);
            if (r.type != proto::REP_SERVER)
                break;
        }
    }
    EXPECT_TRUE(closed);
    EXPECT_TRUE(s.log.wait_for("handshake not finished within 300 ms"));
    limits::set_handshake_timeout(saved);
}

TEST_F(handshake, stop_ends_a_connection_stuck_in_the_handshake) {
    raw_client c = s.connect();
    c.greeting();
    s.srv->stop();
    EXPECT_TRUE(s.served_done(0));
    EXPECT_TRUE(c.closed_by_server());
}

} // namespace
