#pragma once
// thin_dump XML of a pool the way a snapshot workload leaves it: an origin, then snapshots that
// each repeat an earlier device but for bursts of rewritten blocks (new data blocks, a later
// time), discarded ranges and a few new blocks. Printed as thin_dump prints it (runs merged), so
// restore → dump must give it back byte for byte. A restore should share most of each snapshot's
// leaves with the device it repeats.
#include <cstdint>
#include <map>
#include <random>
#include <sstream>
#include <string>
#include <vector>

namespace thinpool_test {

inline std::string snapshot_series_xml(unsigned seed, std::uint64_t origin_blocks = 20000, int snapshots = 3) {
    struct mapping {
        std::uint64_t data;
        std::uint32_t time;
    };
    using device = std::map<std::uint64_t, mapping>;
    std::mt19937_64 rng(seed);
    std::uint64_t next_data = 0;
    std::vector<device> devs(1);
    for (std::uint64_t v = 0; v < origin_blocks; ++v)
        if (rng() % 16) devs[0][v] = {next_data++, 0};
    for (int s = 1; s <= snapshots; ++s) {
        device d = devs[rng() % devs.size()];
        for (int burst = 0; burst < 6; ++burst) {
            std::uint64_t at = rng() % origin_blocks, len = 1 + rng() % 200;
            switch (burst % 3) {
            case 0:
                for (std::uint64_t v = at; v < at + len && v < origin_blocks; ++v) d[v] = {next_data++, std::uint32_t(s)};
                break;
            case 1:
                for (std::uint64_t v = at; v < at + len; ++v) d.erase(v);
                break;
            default:
                for (std::uint64_t v = at; v < at + len && v < origin_blocks; v += 1 + rng() % 20)
                    d[v] = {next_data++, std::uint32_t(s)};
            }
        }
        devs.push_back(d);
    }

    std::ostringstream xml;
    xml << "<superblock uuid=\"\" time=\"" << snapshots << "\" transaction=\"" << snapshots
        << "\" flags=\"0\" version=\"2\" data_block_size=\"128\" nr_data_blocks=\"" << next_data + 100 << "\">\n";
    for (std::size_t i = 0; i < devs.size(); ++i) {
        const device& d = devs[i];
        xml << "  <device dev_id=\"" << i << "\" mapped_blocks=\"" << d.size() << "\" transaction=\"0\" creation_time=\""
            << i << "\" snap_time=\"" << snapshots << "\">\n";
        for (auto it = d.begin(); it != d.end();) {
            auto end = std::next(it);
            std::uint64_t len = 1;
            while (end != d.end() && end->first == it->first + len && end->second.data == it->second.data + len &&
                   end->second.time == it->second.time) {
                ++end;
                ++len;
            }
            if (len == 1)
                xml << "    <single_mapping origin_block=\"" << it->first << "\" data_block=\"" << it->second.data
                    << "\" time=\"" << it->second.time << "\"/>\n";
            else
                xml << "    <range_mapping origin_begin=\"" << it->first << "\" data_begin=\"" << it->second.data
                    << "\" length=\"" << len << "\" time=\"" << it->second.time << "\"/>\n";
            it = end;
        }
        xml << "  </device>\n";
    }
    xml << "</superblock>\n";
    return xml.str();
}

} // namespace thinpool_test
