// Support sets as values (docs/support-sets.md): the memory tokens K encoded supports made, with the
// fingerprint of the model that made them; saved as safetensors files that the Python runtime reads too.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "manifest.hpp"

namespace fssam2::detail {

// What a set must agree on with the segmenter that uses it.
struct Fingerprint {
    std::string model, weights, memory_dtype;
    int64_t image_size = 0, tokens_per_support = 0;
    int64_t channels = 0;  // memory channels C (from the tensors' shape, not the metadata)

    static Fingerprint of(const Manifest &manifest);
    bool operator==(const Fingerprint &o) const;
};

// Immutable once made; shared between threads by const reference / shared_ptr<const>.
struct SupportSet {
    Fingerprint fingerprint;
    int64_t shots = 0;
    std::vector<float> memory, memory_pos;  // (1, shots*T, C), support by support
    std::vector<int32_t> image_sizes;       // (shots, 2): source (height, width)
    std::vector<int64_t> mask_areas;        // (shots,): foreground pixels in the source size

    int64_t tokens() const { return shots * fingerprint.tokens_per_support; }
};

// a's supports, then b's; throws Error(FSSAM2_ERR_SUPPORT_SET) unless both were made by the same model.
SupportSet combine(const SupportSet &a, const SupportSet &b);

// Writes a safetensors v1 support-set file atomically (a temporary file beside `path`, then rename).
void save_support_set(const SupportSet &set, const std::string &path, const char *writer_version);

// Reads and checks a file against `expected` (the segmenter's fingerprint); the error names every field that differs.
SupportSet load_support_set(const std::string &path, const Fingerprint &expected);

}  // namespace fssam2::detail
