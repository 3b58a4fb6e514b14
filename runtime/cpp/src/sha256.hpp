// SHA-256 (FIPS 180-4) of a file, as lowercase hex: the manifest's integrity check.
#pragma once

#include <string>

namespace fssam2::detail {

// Throws std::runtime_error if the file cannot be read.
std::string file_sha256(const std::string &path);

}  // namespace fssam2::detail
