#pragma once
// The catalogue (DIR/catalogue): the volumes of a pool by name, and the metadata transaction id
// it describes. Format (thinpool(8), FILES):
//
//   # comment lines and blank lines are ignored
//   thinpool-catalogue 1
//   transaction 7
//   volume vm1 id=0 size=10737418240 created=2024-06-10T12:00:00Z
//   volume base id=1 size=1073741824 created=2024-06-10T12:01:00Z origin=/srv/images/base.img
//
// One `volume` line per volume: the name, then key=value fields in any order: id (thin device id),
// size (bytes, a multiple of 512), created (UTC), and optionally origin (the external origin's
// path, with bytes outside [A-Za-z0-9._/:=,+@~-] written %XX).
//
// Changes go through catalogue_store::commit: the new text goes to catalogue.tmp (fsync'd), the
// current file is kept as catalogue.prev (a hard link), catalogue.tmp is renamed into place and
// the directory fsync'd, so a crash leaves either version whole.
#include "thin/metadata/mapping.h"

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace thin::daemon {

struct volume {
    std::string name;
    dev_id id = 0;
    std::uint64_t size = 0;  // bytes
    std::int64_t created = 0;  // unix seconds
    std::optional<std::string> origin;
    bool operator==(const volume&) const = default;
};

struct catalogue {
    std::uint64_t transaction_id = 0;
    std::vector<volume> volumes;  // sorted by name

    const volume* find(const std::string& name) const;
    volume* find(const std::string& name);
    const volume* find_id(dev_id id) const;
    void add(volume v);  // keeps the order
    void remove(const std::string& name);
    bool operator==(const catalogue&) const = default;
};

std::string format_catalogue(const catalogue& c);
// parse_error "NAME:LINE: ..." on anything malformed (duplicate names or ids included).
catalogue parse_catalogue(const std::string& text, const std::string& name);

class catalogue_store {
public:
    explicit catalogue_store(std::string dir);
    std::string path() const { return dir_ + "/catalogue"; }
    std::string prev_path() const { return dir_ + "/catalogue.prev"; }

    // nullopt when the file does not exist; parse_error / std::system_error otherwise.
    std::optional<catalogue> load() const;
    std::optional<catalogue> load_prev() const;
    // Writes c as the new current version, keeping the old one as catalogue.prev (see above).
    void commit(const catalogue& c);
    // Makes catalogue.prev current again; the abandoned version is kept as catalogue.rolled-back.
    void roll_back();
    // Removes a catalogue.tmp left by a crash before its rename.
    void remove_stale_tmp();

private:
    std::string dir_;
};

} // namespace thin::daemon
