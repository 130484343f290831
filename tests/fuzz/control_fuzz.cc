// The daemon's control-protocol request decoding (thin/daemon/text.h: decode_words, what the
// control server runs on every request line) and the other parsers of peer or user text: sizes,
// numbers, volume names, timestamps, the catalogue and the config file. Bad input must be a
// parse_error (or another std::exception); a decoded request must survive encode -> decode.
#include "thin/daemon/catalogue.h"
#include "thin/daemon/config.h"
#include "thin/daemon/protocol.h"
#include "thin/daemon/text.h"

#include <exception>
#include <string>
#include <string_view>

namespace {

template <typename F>
void quietly(F f) {
    try {
        f();
    } catch (const std::exception&) {
    }
}

void round_trip(std::string_view line) {
    std::vector<std::string> words;
    try {
        words = thin::daemon::decode_words(line);
    } catch (const std::exception&) {
        return;
    }
    if (words.empty()) return;
    std::vector<std::string> again = thin::daemon::decode_words(thin::daemon::encode_words(words));
    if (again != words) __builtin_trap();
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    std::string_view text(reinterpret_cast<const char*>(data), size);
    // The control server decodes one line of at most MAX_REQUEST_BYTES.
    std::string_view line = text.substr(0, std::min(text.find('\n'), thin::daemon::MAX_REQUEST_BYTES));
    round_trip(line);
    quietly([&] { thin::daemon::decode_word(line); });
    quietly([&] { thin::daemon::parse_size(line, "size"); });
    quietly([&] { thin::daemon::parse_size(line, "size", 0); });
    quietly([&] { thin::daemon::parse_u64(line, "number"); });
    quietly([&] { thin::daemon::parse_iso_time(line); });
    quietly([&] { thin::daemon::check_volume_name(line); });
    quietly([&] { thin::daemon::parse_catalogue(std::string(text), "catalogue"); });
    quietly([&] { thin::daemon::parse_config_text(std::string(text), "config"); });
    return 0;
}
