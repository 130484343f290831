#pragma once
// Choosing the device-details tree and level-1 mapping tree a repair trusts (rules in repair.h).
#include "thin/metadata/mapping.h"
#include "thin/metadata/superblock.h"

#include "persistent-data/block_manager.h"

#include <functional>
#include <map>
#include <optional>
#include <string>

namespace thin::repair {

struct chosen_trees {
    std::string source;  // "superblock", "metadata snapshot (block N)", "scan", "nothing"
    pdata::block_address details_root = 0;
    pdata::block_address mapping_root = 0;
    std::map<dev_id, device_details> details;
    // Level-2 root per device of the level-1 tree; nullopt when that root is not a good node.
    std::map<dev_id, std::optional<pdata::block_address>> roots;
};

// sb0: the superblock at block 0 when it is good, else nullptr. report gets one line per decision.
chosen_trees choose_trees(pdata::block_manager& bm, const superblock* sb0,
                          const std::function<void(const std::string&)>& report);

} // namespace thin::repair
