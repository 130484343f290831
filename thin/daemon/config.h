#pragma once
// The daemon's settings: built-in defaults, then DIR/thinpool.conf (if present), then --config
// FILE, then the command line; each later source wins per key.
//
// Config file: `key = value` lines; blank lines and lines starting with '#' are ignored (a '#'
// after a value is part of the value: paths may hold one). Keys: metadata, data, block_size,
// low_water_mark, features, socket, nbd_socket, nbd_tcp, no_space_timeout, data_size,
// metadata_size, read_only. An unknown key, a line without '=', or a bad value is an error naming
// file:line.
#include "thin/pool/pool.h"

#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace thin::daemon {

constexpr std::uint64_t DEFAULT_METADATA_BYTES = 64ull << 20;
constexpr std::uint64_t DEFAULT_DATA_BYTES = 16ull << 30;
constexpr std::uint32_t DEFAULT_BLOCK_SECTORS = 128;  // 64 KiB

// One setting as given, by key; unset fields keep the earlier source's value.
struct settings {
    std::optional<std::string> metadata, data, socket, nbd_socket, nbd_tcp;
    std::optional<std::uint32_t> block_size;          // sectors
    std::optional<std::uint64_t> low_water_mark;      // blocks
    std::optional<std::vector<std::string>> features;
    std::optional<std::chrono::seconds> no_space_timeout;
    std::optional<std::uint64_t> data_size, metadata_size;  // bytes, for files created on first run
    std::optional<bool> read_only;

    // Sets key from text (the config file's and the command line's spelling of values); throws
    // parse_error naming the key.
    void set(const std::string& key, const std::string& value);
    // Fields set in `later` replace ours.
    void merge(const settings& later);
};

// Parses a config file; parse_error "FILE:LINE: ..." on any bad line, and when it cannot be read.
settings read_config_file(const std::string& path);
settings parse_config_text(const std::string& text, const std::string& name);

// Everything the daemon needs, resolved (paths made from dir where not given).
struct daemon_options {
    std::string dir = "./pool";
    std::string metadata_path, data_path;  // default dir/metadata, dir/data
    bool metadata_given = false, data_given = false;
    std::optional<std::uint32_t> block_size;  // sectors; nullopt: the superblock's, or 128 when new
    std::uint64_t low_water_mark = 0;
    thin::pool::pool_features features;
    std::vector<std::string> feature_words;
    std::string socket_path;               // default dir/control.sock
    std::string nbd_socket_path;           // default dir/nbd.sock; empty: none
    std::optional<std::string> nbd_tcp;    // HOST:PORT
    std::chrono::seconds no_space_timeout{60};
    std::uint64_t data_size = DEFAULT_DATA_BYTES, metadata_size = DEFAULT_METADATA_BYTES;
    bool data_size_given = false, metadata_size_given = false;
    bool adopt = false;  // rebuild the catalogue from the metadata when the two disagree
    // Pool tuning for tests.
    std::chrono::milliseconds commit_period{1000};
    // One line per event (without timestamp; the daemon adds it). Default: stderr.
    std::function<void(const std::string&)> log;
};

// Resolves merged settings into options for state directory `dir`; parse_error on bad values
// (unknown feature, block size out of range).
daemon_options resolve(const std::string& dir, const settings& s);

// Splits "HOST:PORT" ("[::1]:10809" for IPv6); parse_error otherwise.
std::pair<std::string, std::uint16_t> split_host_port(const std::string& text);

} // namespace thin::daemon
