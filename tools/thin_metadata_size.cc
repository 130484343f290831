// thin_metadata_size: estimates the metadata device size for a pool (tools.md §11). Interface,
// output and messages are those of thin-provisioning-tools 0.9.0, byte for byte. Options are
// parsed with getopt_long, as 0.9.0 does, so abbreviations, optional -n arguments, argument
// permutation and the diagnostics for unknown options all behave the same.
#include "thin/cli/common.h"
#include "thin/size/metadata_size.h"

#include <cstdio>
#include <getopt.h>
#include <string>

namespace ms = thin::metadata_size;

namespace {

const char* const HELP =
    "Thin Provisioning Metadata Device Size Calculator.\n"
    "Usage: thin_metadata_size [options]\n"
    "\t-b  --block-size BLOCKSIZE[bskKmMgGtTpPeEzZyY]  Block size of thin provisioned devices.\n"
    "\t-s  --pool-size SIZE[bskKmMgGtTpPeEzZyY]        Size of pool device.\n"
    "\t-m  --max-thins #MAXTHINS[bskKmMgGtTpPeEzZyY]   Maximum sum of all thin devices and snapshots.\n"
    "\t-u  --unit {bskKmMgGtTpPeEzZyY}                 Output unit specifier.\n"
    "\t-n  --numeric-only [short|long]                 Output numeric value only (optionally with short/long "
    "unit identifier).\n"
    "\t-h  --help                                      This help.\n"
    "\t-V  --version                                   Print thin provisioning tools version.\n";

int fail(const char* msg) {
    std::fprintf(stderr, "thin_metadata_size - %s\n", msg);
    return 1;
}

enum class numeric { off, plain, short_unit, long_unit };

struct size_option {
    ms::sized_arg arg;
    std::uint64_t value = 0;  // 0 = not given (a later option may then set it)
    // Unit word printed in the summary line. A size without a unit counts in sectors, yet 0.9.0
    // prints the word of the output unit selected (-u) at the time the size was parsed.
    const char* word = "";
};

} // namespace

int main(int argc, char** argv) {
    static const option longopts[] = {
        {"block-size", required_argument, nullptr, 'b'},
        {"pool-size", required_argument, nullptr, 's'},
        {"max-thins", required_argument, nullptr, 'm'},
        {"unit", required_argument, nullptr, 'u'},
        {"numeric-only", optional_argument, nullptr, 'n'},
        {"help", no_argument, nullptr, 'h'},
        {"version", no_argument, nullptr, 'V'},
        {nullptr, 0, nullptr, 0},
    };
    size_option block, pool, thins;
    const ms::unit* out_unit = ms::unit_for_letter('s');
    numeric num = numeric::off;

    int c;
    while ((c = getopt_long(argc, argv, "b:s:m:u:n::hV", longopts, nullptr)) != -1) {
        switch (c) {
        case 'b':
        case 's':
        case 'm': {
            size_option& o = c == 'b' ? block : c == 's' ? pool : thins;
            if (o.value) return fail("option already given!");
            auto a = ms::parse_sized(optarg);
            if (!a) return fail("Invalid unit specifier!");
            o.arg = *a;
            o.value = c == 'm' ? ms::to_count(*a) : ms::to_sectors(*a);
            o.word = a->u ? a->u->word : c == 'm' ? "" : out_unit->word;
            break;
        }
        case 'u':
            out_unit = ms::parse_output_unit(optarg);
            if (!out_unit) return fail("output unit specifier invalid!");
            break;
        case 'n': {
            if (num != numeric::off) return fail("-n already given!");
            num = numeric::plain;
            if (optarg) {
                std::string_view a(optarg);
                if (!a.empty() && std::string_view("short").starts_with(a))
                    num = numeric::short_unit;
                else if (!a.empty() && std::string_view("long").starts_with(a))
                    num = numeric::long_unit;
                else
                    return fail("-n invalid option argument");
            }
            break;
        }
        case 'h':
            std::fputs(HELP, stdout);
            return 0;
        case 'V':
            std::printf("%s\n", thin::cli::version().c_str());
            return 0;
        default:
            return 1;  // getopt_long has printed the diagnostic
        }
    }

    if (!block.value) return fail("block size required!");
    if (!pool.value) return fail("pool size required!");
    if (!thins.value) return fail("max thins required!");
    if (block.value & (block.value - 1)) return fail("block size must be 2^^N");
    if (pool.value <= block.value) return fail("pool size must be larger than block size");

    double blocks = ms::estimate_blocks(block.value, pool.value, thins.value);
    std::string value = ms::format_value(ms::in_unit(blocks, *out_unit));
    switch (num) {
    case numeric::plain:
        std::printf("%s\n", value.c_str());
        break;
    case numeric::short_unit:
        std::printf("%s%c\n", value.c_str(), out_unit->letter);
        break;
    case numeric::long_unit:
        std::printf("%s%s\n", value.c_str(), out_unit->word);
        break;
    case numeric::off: {
        std::printf("thin_metadata_size - %s %s estimated metadata area size for \"--block-size=%s%s "
                    "--pool-size=%s%s --max-thins=%s%s\"\n",
                    value.c_str(), out_unit->word, block.arg.digits.c_str(), block.word, pool.arg.digits.c_str(),
                    pool.word, thins.arg.digits.c_str(), thins.word);
        break;
    }
    }
    return 0;
}
