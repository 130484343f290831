// thin/nbd/connection.cc: commands, replies and request checking, over a socketpair.
#include "tests/thin/nbd/raw_client.h"

#include <gtest/gtest.h>

#include <random>
#include <set>

using namespace nbd_test;

namespace {

constexpr std::uint32_t BLOCK = 64 * 1024;

class transmission : public ::testing::TestWithParam<bool> {
protected:
    bool structured() const { return GetParam(); }
    raw_client open(const std::string& name = "disk") {
        raw_client c = s.connect();
        c.go(name, structured(), structured());
        return c;
    }
    socketpair_server s;
};

INSTANTIATE_TEST_SUITE_P(replies, transmission, ::testing::Values(false, true),
                         [](const auto& info) { return info.param ? "structured" : "simple"; });

TEST_P(transmission, writes_then_reads_back_patterns) {
    raw_client c = open();
    for (std::uint64_t off : {0ull, 512ull, 65536ull * 3 + 1024, (8ull << 20) - 8192}) {
        bytes data = pattern(8192 - (off % 4096), static_cast<std::uint8_t>(off / 512));
        data.resize(data.size() / 512 * 512);
        ASSERT_EQ(c.write(off, data), 0u) << off;
        EXPECT_EQ(c.read(off, static_cast<std::uint32_t>(data.size())), data) << off;
        EXPECT_EQ(s.disk->bytes(off, data.size()), data) << off;
    }
}

TEST_P(transmission, large_read_is_one_reply) {
    s.disk->fill(0, 4 << 20, 0x5a);
    raw_client c = open();
    bytes got = c.read(0, 4 << 20);
    EXPECT_EQ(got, bytes(4 << 20, 0x5a));
}

TEST_P(transmission, fua_reaches_the_export_and_flush_is_a_flush) {
    raw_client c = open();
    ASSERT_EQ(c.write(0, pattern(4096, 1), proto::CMD_FLAG_FUA), 0u);
    ASSERT_EQ(c.write(4096, pattern(4096, 2)), 0u);
    ASSERT_EQ(c.command(proto::CMD_FLUSH, 0, 0, 0), 0u);
    ASSERT_EQ(c.command(proto::CMD_FLUSH, proto::CMD_FLAG_FUA, 0, 0), 0u);  // FUA is allowed on anything
    auto reqs = s.disk->requests();
    ASSERT_EQ(reqs.size(), 4u);
    EXPECT_TRUE(reqs[0].op == io_op::write && reqs[0].fua);
    EXPECT_TRUE(reqs[1].op == io_op::write && !reqs[1].fua);
    EXPECT_TRUE(reqs[2].op == io_op::flush && reqs[2].nr_sectors == 0);
    EXPECT_EQ(reqs[3].op, io_op::flush);
}

TEST_P(transmission, trim_unmaps_and_trim_with_fua_also_flushes) {
    s.disk->fill(0, 4 * BLOCK, 0x11);
    raw_client c = open();
    ASSERT_EQ(c.command(proto::CMD_TRIM, 0, BLOCK, BLOCK), 0u);
    EXPECT_FALSE(s.disk->mapped(1));
    EXPECT_EQ(c.read(BLOCK, 4096), bytes(4096, 0));
    ASSERT_EQ(c.command(proto::CMD_TRIM, proto::CMD_FLAG_FUA, 2 * BLOCK, BLOCK), 0u);
    auto reqs = s.disk->requests();
    ASSERT_EQ(reqs.size(), 4u);  // discard, read, discard, flush
    EXPECT_EQ(reqs[0].op, io_op::discard);
    EXPECT_EQ(reqs[0].sector, BLOCK / 512);
    EXPECT_EQ(reqs[2].op, io_op::discard);
    EXPECT_EQ(reqs[3].op, io_op::flush);
    EXPECT_FALSE(s.disk->mapped(2));
    EXPECT_TRUE(s.disk->mapped(3));
}

TEST_P(transmission, trim_is_refused_where_the_export_cannot_trim) {
    s.provider->add("notrim", "", std::make_shared<memory_export>(memory_export::options{.can_trim = false}));
    raw_client c = open("notrim");
    EXPECT_EQ(c.command(proto::CMD_TRIM, 0, 0, BLOCK), proto::NBD_EINVAL);
    EXPECT_EQ(c.read(0, 512), bytes(512, 0));
}

TEST_P(transmission, write_zeroes_punches_holes_unless_no_hole) {
    s.disk->fill(0, 4 * BLOCK, 0x22);
    raw_client c = open();
    ASSERT_EQ(c.command(proto::CMD_WRITE_ZEROES, 0, 0, BLOCK), 0u);
    EXPECT_FALSE(s.disk->mapped(0));
    ASSERT_EQ(c.command(proto::CMD_WRITE_ZEROES, proto::CMD_FLAG_NO_HOLE | proto::CMD_FLAG_FUA, BLOCK, BLOCK), 0u);
    EXPECT_TRUE(s.disk->mapped(1));
    EXPECT_EQ(c.read(0, 2 * BLOCK), bytes(2 * BLOCK, 0));
    auto reqs = s.disk->requests();
    ASSERT_GE(reqs.size(), 2u);
    EXPECT_TRUE(reqs[0].op == io_op::write_zeroes && !reqs[0].no_hole && !reqs[0].fua);
    EXPECT_TRUE(reqs[1].op == io_op::write_zeroes && reqs[1].no_hole && reqs[1].fua);
}

TEST_P(transmission, fast_zero_only_where_whole_blocks_can_go) {
    s.disk->fill(0, 4 * BLOCK, 0x33);
    raw_client c = open();
    EXPECT_EQ(c.command(proto::CMD_WRITE_ZEROES, proto::CMD_FLAG_FAST_ZERO, 0, 2 * BLOCK), 0u);
    EXPECT_FALSE(s.disk->mapped(0));
    // Unaligned, partial or NO_HOLE: refused at once, nothing done.
    EXPECT_EQ(c.command(proto::CMD_WRITE_ZEROES, proto::CMD_FLAG_FAST_ZERO, 2 * BLOCK + 512, BLOCK), proto::NBD_ENOTSUP);
    EXPECT_EQ(c.command(proto::CMD_WRITE_ZEROES, proto::CMD_FLAG_FAST_ZERO, 2 * BLOCK, 4096), proto::NBD_ENOTSUP);
    EXPECT_EQ(c.command(proto::CMD_WRITE_ZEROES, proto::CMD_FLAG_FAST_ZERO | proto::CMD_FLAG_NO_HOLE, 2 * BLOCK, BLOCK),
              proto::NBD_ENOTSUP);
    EXPECT_EQ(s.disk->bytes(2 * BLOCK, 2 * BLOCK), bytes(2 * BLOCK, 0x33));
    EXPECT_EQ(s.disk->requests().size(), 1u);
}

TEST_P(transmission, export_errors_map_to_nbd_errors) {
    raw_client c = open();
    s.disk->fail_next(-ENOSPC);
    EXPECT_EQ(c.write(0, pattern(512, 1)), proto::NBD_ENOSPC);
    s.disk->fail_next(-EIO);
    std::uint32_t err = 0;
    EXPECT_TRUE(c.read(0, 512, &err).empty());
    EXPECT_EQ(err, proto::NBD_EIO);
    s.disk->fail_next(-EOPNOTSUPP);
    EXPECT_EQ(c.command(proto::CMD_TRIM, 0, 0, BLOCK), proto::NBD_ENOTSUP);
    s.disk->fail_next(-EDQUOT);
    EXPECT_EQ(c.command(proto::CMD_WRITE_ZEROES, 0, 0, 512), proto::NBD_ENOSPC);
    s.disk->fail_next(-ENOENT);  // anything unlisted is EIO
    EXPECT_EQ(c.command(proto::CMD_FLUSH, 0, 0, 0), proto::NBD_EIO);
    EXPECT_EQ(c.read(0, 512), bytes(512, 0));  // still in step
}

TEST_P(transmission, bad_requests_are_refused_and_the_connection_survives) {
    raw_client c = open();
    const std::uint64_t size = 8 << 20;
    struct bad {
        std::uint16_t type, flags;
        std::uint64_t off;
        std::uint32_t len;
        std::uint32_t error;
    };
    std::vector<bad> cases = {
        {proto::CMD_READ, 0, size - 512, 1024, proto::NBD_EINVAL},      // past the end
        {proto::CMD_READ, 0, ~0ull - 511, 1024, proto::NBD_EINVAL},     // offset + length overflows
        {proto::CMD_READ, 0, 100, 512, proto::NBD_EINVAL},              // unaligned offset
        {proto::CMD_READ, 0, 0, 100, proto::NBD_EINVAL},                // unaligned length
        {proto::CMD_READ, 0, 0, 0, proto::NBD_EINVAL},                  // zero length
        {proto::CMD_READ, 0, 0, 64 << 20, proto::NBD_EINVAL},           // over the maximum (and the size)
        {proto::CMD_TRIM, 0, size, 512, proto::NBD_EINVAL},
        {proto::CMD_TRIM, 0, 0, 0, proto::NBD_EINVAL},
        {proto::CMD_WRITE_ZEROES, 0, size - 512, 1024, proto::NBD_ENOSPC},
        {proto::CMD_WRITE_ZEROES, 0, 512, 100, proto::NBD_EINVAL},
        {proto::CMD_FLUSH, 0, 0, 512, proto::NBD_EINVAL},               // flush fields must be zero
        {proto::CMD_READ, proto::CMD_FLAG_NO_HOLE, 0, 512, proto::NBD_EINVAL},  // flag of another command
        {proto::CMD_WRITE_ZEROES, 1u << 9, 0, 512, proto::NBD_EINVAL},  // unknown flag
        {proto::CMD_BLOCK_STATUS, proto::CMD_FLAG_DF, 0, 512, proto::NBD_EINVAL},
        {proto::CMD_CACHE, 0, 0, 512, proto::NBD_EINVAL},               // not offered
        {42, 0, 0, 512, proto::NBD_EINVAL},                             // unknown command
    };
    if (!structured())
        cases.push_back({proto::CMD_READ, proto::CMD_FLAG_DF, 0, 512, proto::NBD_EINVAL});  // DF not offered
    for (const bad& b : cases) {
        std::string msg;
        EXPECT_EQ(c.command(b.type, b.flags, b.off, b.len, {}, &msg), b.error)
            << proto::command_name(b.type) << " flags " << b.flags << " at " << b.off << "+" << b.len;
        if (structured()) {
            EXPECT_FALSE(msg.empty());
        }
    }
    EXPECT_EQ(s.disk->submitted(), 0u);  // nothing reached the export
    EXPECT_EQ(c.read(0, 512), bytes(512, 0));
}

TEST_P(transmission, refused_writes_consume_their_payload) {
    raw_client c = open();
    const std::uint64_t size = 8 << 20;
    EXPECT_EQ(c.write(size - 512, pattern(1024, 1)), proto::NBD_ENOSPC);
    EXPECT_EQ(c.write(100, pattern(512, 2)), proto::NBD_EINVAL);
    EXPECT_EQ(c.write(0, bytes(1000, 3)), proto::NBD_EINVAL);
    EXPECT_EQ(c.write(0, {}), proto::NBD_EINVAL);
    EXPECT_EQ(c.write(0, pattern(512, 4), 1u << 7), proto::NBD_EINVAL);  // unknown flag
    EXPECT_EQ(s.disk->submitted(), 0u);
    ASSERT_EQ(c.write(0, pattern(512, 5)), 0u);
    EXPECT_EQ(c.read(0, 512), pattern(512, 5));
}

TEST_P(transmission, write_over_the_maximum_is_refused_but_read_through) {
    socketpair_server small({.max_request_bytes = 1 << 20});
    raw_client c = small.connect();
    c.go("disk", structured(), false);
    EXPECT_EQ(c.write(0, pattern(2 << 20, 1)), proto::NBD_EINVAL);
    EXPECT_EQ(small.disk->submitted(), 0u);
    std::uint32_t err = 0;
    c.read(0, 2 << 20, &err);
    EXPECT_EQ(err, proto::NBD_EINVAL);
    ASSERT_EQ(c.write(0, pattern(1 << 20, 2)), 0u);
    EXPECT_EQ(c.read(0, 1 << 20), pattern(1 << 20, 2));
}

TEST_P(transmission, unreasonable_write_payload_ends_the_connection) {
    raw_client c = open();
    c.request(proto::CMD_WRITE, 0, 1, 0, 0xfffffe00);
    EXPECT_TRUE(c.closed_by_server());
    EXPECT_TRUE(s.log.wait_for("protocol error: NBD_CMD_WRITE with a 4294966784-byte payload"));
}

TEST_P(transmission, bad_request_magic_ends_the_connection) {
    raw_client c = open();
    bytes b(28, 0);
    b[0] = 0x12;
    c.send(b);
    EXPECT_TRUE(c.closed_by_server());
    EXPECT_TRUE(s.log.wait_for("bad request magic 0x12000000"));
    EXPECT_TRUE(s.served_done(0));
}

TEST_P(transmission, read_only_export_refuses_writes_with_eperm) {
    raw_client c = open("ro");
    EXPECT_EQ(c.write(0, pattern(512, 1)), proto::NBD_EPERM);
    EXPECT_EQ(c.command(proto::CMD_TRIM, 0, 0, 512), proto::NBD_EPERM);
    EXPECT_EQ(c.command(proto::CMD_WRITE_ZEROES, 0, 0, 512), proto::NBD_EPERM);
    EXPECT_EQ(c.read(0, 512), bytes(512, 0));
    EXPECT_EQ(c.command(proto::CMD_FLUSH, 0, 0, 0), 0u);
    auto reqs = s.ro->requests();
    ASSERT_EQ(reqs.size(), 2u);
    EXPECT_EQ(reqs[0].op, io_op::read);
    EXPECT_EQ(reqs[1].op, io_op::flush);
}

TEST_P(transmission, server_wide_read_only_refuses_writes) {
    socketpair_server ro_server({.read_only = true});
    raw_client c = ro_server.connect();
    c.go("disk", structured(), false);
    EXPECT_EQ(c.write(0, pattern(512, 1)), proto::NBD_EPERM);
    EXPECT_EQ(ro_server.disk->submitted(), 0u);
}

// ---- structured replies only ------------------------------------------------------------------

class structured : public ::testing::Test {
protected:
    socketpair_server s;
    raw_client open() {
        raw_client c = s.connect();
        c.go("disk");
        return c;
    }
};

TEST_F(structured, error_chunks_carry_a_message) {
    raw_client c = open();
    std::string msg;
    EXPECT_EQ(c.command(proto::CMD_READ, 0, 8 << 20, 512, {}, &msg), proto::NBD_EINVAL);
    EXPECT_EQ(msg, "NBD_CMD_READ beyond the end of the export");
    s.disk->fail_next(-EIO);
    EXPECT_EQ(c.command(proto::CMD_FLUSH, 0, 0, 0, {}, &msg), proto::NBD_EIO);
    EXPECT_EQ(msg, "Input/output error");
}

TEST_F(structured, read_with_df_is_one_chunk) {
    s.disk->fill(BLOCK, BLOCK, 7);
    raw_client c = open();
    bytes want(8192, 0);
    std::fill(want.begin() + 4096, want.end(), 7);
    EXPECT_EQ(c.read(BLOCK - 4096, 8192, nullptr, proto::CMD_FLAG_DF), want);
}

// ---- block status --------------------------------------------------------------------------------

class block_status : public ::testing::Test {
protected:
    socketpair_server s;
    raw_client open() {
        raw_client c = s.connect();
        c.go("disk");
        return c;
    }
    static constexpr std::uint32_t HOLE = proto::STATE_HOLE | proto::STATE_ZERO;
};

TEST_F(block_status, reports_holes_and_data) {
    s.disk->fill(BLOCK, 2 * BLOCK, 1);
    s.disk->fill(5 * BLOCK, BLOCK, 1);
    raw_client c = open();
    using d = std::vector<std::pair<std::uint32_t, std::uint32_t>>;
    EXPECT_EQ(c.block_status(0, 8 * BLOCK), (d{{BLOCK, HOLE}, {2 * BLOCK, 0}, {2 * BLOCK, HOLE}, {BLOCK, 0}, {2 * BLOCK, HOLE}}));
    // Clipped to the request at both ends.
    EXPECT_EQ(c.block_status(BLOCK / 2, BLOCK), (d{{BLOCK / 2, HOLE}, {BLOCK / 2, 0}}));
    // REQ_ONE: one descriptor, no longer than asked.
    EXPECT_EQ(c.block_status(0, 8 * BLOCK, proto::CMD_FLAG_REQ_ONE), (d{{BLOCK, HOLE}}));
    EXPECT_EQ(c.block_status(BLOCK, BLOCK / 2, proto::CMD_FLAG_REQ_ONE), (d{{BLOCK / 2, 0}}));
    // Any length is answered (the range is rounded up to sectors for the export).
    EXPECT_EQ(c.block_status(BLOCK, 1000), (d{{1000, 0}}));
}

TEST_F(block_status, follows_writes_trims_and_zeroes) {
    raw_client c = open();
    ASSERT_EQ(c.write(0, pattern(4096, 1)), 0u);
    using d = std::vector<std::pair<std::uint32_t, std::uint32_t>>;
    EXPECT_EQ(c.block_status(0, 2 * BLOCK), (d{{BLOCK, 0}, {BLOCK, HOLE}}));
    ASSERT_EQ(c.command(proto::CMD_TRIM, 0, 0, BLOCK), 0u);
    EXPECT_EQ(c.block_status(0, 2 * BLOCK), (d{{2 * BLOCK, HOLE}}));
    ASSERT_EQ(c.command(proto::CMD_WRITE_ZEROES, proto::CMD_FLAG_NO_HOLE, BLOCK, BLOCK), 0u);
    EXPECT_EQ(c.block_status(0, 2 * BLOCK), (d{{BLOCK, HOLE}, {BLOCK, 0}}));
}

TEST_F(block_status, many_extents_are_capped_per_reply) {
    // 4 KiB blocks, every other one written: 4096 alternating extents over 16 MiB.
    auto fine = std::make_shared<memory_export>(memory_export::options{.size = 16 << 20, .block = 4096});
    for (std::uint64_t b = 0; b < 4096; b += 2)
        fine->fill(b * 4096, 4096, 1);
    s.provider->add("fine", "", fine);
    raw_client c = s.connect();
    c.go("fine");
    auto got = c.block_status(0, 16 << 20);
    ASSERT_EQ(got.size(), 1024u);
    for (std::size_t i = 0; i < got.size(); ++i)
        ASSERT_EQ(got[i], std::make_pair(4096u, i % 2 ? HOLE : 0u)) << i;
    // The client asks again from where the reply stopped.
    got = c.block_status(4 << 20, 12 << 20);
    ASSERT_EQ(got.size(), 1024u);
    EXPECT_EQ(got[0], std::make_pair(4096u, 0u));
}

TEST_F(block_status, out_of_range_and_unaligned_are_invalid) {
    raw_client c = open();
    std::uint32_t err = 0;
    c.block_status((8 << 20) - 512, 1024, 0, &err);
    EXPECT_EQ(err, proto::NBD_EINVAL);
    c.block_status(100, 512, 0, &err);
    EXPECT_EQ(err, proto::NBD_EINVAL);
    c.block_status(0, 0, 0, &err);
    EXPECT_EQ(err, proto::NBD_EINVAL);
    EXPECT_EQ(s.disk->block_status_calls(), 0);
}

TEST_F(block_status, refused_without_a_selected_context) {
    raw_client c = s.connect();
    c.go("disk", true, false);
    std::uint32_t err = 0;
    c.block_status(0, 512, 0, &err);
    EXPECT_EQ(err, proto::NBD_EINVAL);
}

// ---- many requests at once --------------------------------------------------------------------

TEST_P(transmission, many_requests_in_flight_complete_out_of_order) {
    raw_client c = open();
    s.disk->hold();
    const int n = 64;
    for (int i = 0; i < n; ++i)
        c.request(proto::CMD_WRITE, 0, 100 + i, std::uint64_t(i) * 8192, 8192, pattern(8192, std::uint8_t(i)));
    // Every write reaches the export before any completes: the server does not wait for replies.
    ASSERT_TRUE(s.disk->wait_submitted(n));
    // Completed newest first: replies come in completion order.
    for (int i = n - 1; i >= 0; --i) {
        s.disk->release_one(true);
        reply r = c.read_reply();
        EXPECT_EQ(r.cookie, std::uint64_t(100 + i));
        EXPECT_EQ(r.any_error(), 0u);
    }
    s.disk->open_gate();
    for (int i = 0; i < n; ++i)
        c.request(proto::CMD_READ, 0, 500 + i, std::uint64_t(i) * 8192, 8192);
    std::set<std::uint64_t> seen;
    for (int i = 0; i < n; ++i) {
        reply r = c.read_reply(8192);
        int k = int(r.cookie) - 500;
        ASSERT_TRUE(k >= 0 && k < n);
        seen.insert(r.cookie);
        bytes data = r.structured ? bytes(r.payload.begin() + 8, r.payload.end()) : r.payload;
        EXPECT_EQ(data, pattern(8192, std::uint8_t(k))) << k;
    }
    EXPECT_EQ(seen.size(), std::size_t(n));
}

TEST_P(transmission, disc_answers_what_is_in_flight_then_closes) {
    raw_client c = open();
    s.disk->hold();
    for (int i = 0; i < 8; ++i)
        c.request(proto::CMD_WRITE, 0, i, std::uint64_t(i) * 512, 512, pattern(512, 1));
    c.disconnect();
    ASSERT_TRUE(s.disk->wait_submitted(8));
    s.disk->open_gate();
    for (int i = 0; i < 8; ++i)
        EXPECT_EQ(c.read_reply().any_error(), 0u);
    EXPECT_TRUE(c.closed_by_server());
    EXPECT_TRUE(s.served_done(0));
    EXPECT_TRUE(s.log.wait_for("closed export 'disk': client disconnected (NBD_CMD_DISC)"));
    EXPECT_EQ(s.disk.use_count(), 2);  // the connection let go of the export
}

TEST_P(transmission, disconnect_mid_request_is_harmless) {
    raw_client c = open();
    bytes b;
    proto::packer(b).u32(proto::REQUEST_MAGIC).u16(0).u16(proto::CMD_WRITE).u64(1).u64(0).u32(4096);
    bytes half = pattern(2048, 3);
    b.insert(b.end(), half.begin(), half.end());
    c.send(b);
    c.close();
    EXPECT_TRUE(s.served_done(0));
    EXPECT_EQ(s.disk->submitted(), 0u);
    EXPECT_EQ(s.srv->connections(), 0u);
}

TEST_P(transmission, client_vanishing_with_requests_in_flight_waits_for_them) {
    raw_client c = open();
    s.disk->hold();
    for (int i = 0; i < 16; ++i)
        c.request(proto::CMD_READ, 0, i, 0, 65536);
    ASSERT_TRUE(s.disk->wait_submitted(16));
    c.close();
    // The server may not free buffers the export still writes into: serve() waits for completions.
    EXPECT_EQ(s.served.at(0).wait_for(std::chrono::milliseconds(50)), std::future_status::timeout);
    s.disk->open_gate();
    EXPECT_TRUE(s.served_done(0));
    EXPECT_TRUE(s.disk->wait_idle());
}

TEST_P(transmission, connections_to_one_export_share_it) {
    raw_client a = open(), b = open();
    ASSERT_EQ(a.write(0, pattern(4096, 42), proto::CMD_FLAG_FUA), 0u);
    EXPECT_EQ(b.read(0, 4096), pattern(4096, 42));
    EXPECT_EQ(s.srv->connections(), 2u);
}

// Random bytes after a good handshake must never crash or hang the server.
TEST_P(transmission, garbage_never_crashes) {
    std::mt19937 rng(structured() ? 1 : 2);
    for (int round = 0; round < 40; ++round) {
        raw_client c = open();
        bytes junk(1 + rng() % 2000);
        for (auto& x : junk)
            x = std::uint8_t(rng());
        if (round % 2) {  // a valid magic makes the rest of the header count
            junk.resize(std::max<std::size_t>(junk.size(), 28));
            junk[0] = 0x25, junk[1] = 0x60, junk[2] = 0x95, junk[3] = 0x13;
        }
        c.send_quiet(junk);
        c.close();
    }
    for (std::size_t i = 0; i < s.served.size(); ++i)
        EXPECT_TRUE(s.served_done(i)) << i;
    EXPECT_EQ(s.srv->connections(), 0u);
}

} // namespace
