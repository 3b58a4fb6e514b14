// The FS-SAM2 memory-bank loop over the four graphs on ONNX Runtime (= runtime/segmenter.py):
// each support is encoded once (image encoder -> memory encoder on its mask as logits) into a support
// set's memory tokens; a query runs the image encoder once, then per set the memory attention over the
// set's tokens and the mask decoder, and its logits are upsampled to the query's size.
//
// Threading: encode and segment are const and keep no per-call state in the object (ORT's Session::Run
// is thread-safe), so any number of threads may call them at once with the same or different sets. The
// default set of the add_support/segment/reset API is a shared_ptr swapped under a mutex: a segment
// call takes a snapshot of it and runs unlocked.
#pragma once

#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <onnxruntime_cxx_api.h>

#include "image.hpp"
#include "manifest.hpp"
#include "providers.hpp"
#include "support_set.hpp"

namespace fssam2::detail {

struct SegmentOutput {
    std::vector<float> logits;  // (H, W) in the query's size; mask = logits > 0
    float score = 0;
    float object_score = 0;
};

struct Support {
    ImageView image, mask;
};

class Segmenter {
public:
    Segmenter(const std::string &artifacts_dir, const ProviderConfig &providers, int intra_op_threads, bool verify_sha256);
    Segmenter(const Segmenter &) = delete;
    Segmenter &operator=(const Segmenter &) = delete;

    // A new set of the supports, in order (at least one).
    std::shared_ptr<const SupportSet> encode(const std::vector<Support> &supports) const;
    // One output per set, in order; the query's image encoder runs once for all of them.
    std::vector<SegmentOutput> segment(const std::vector<const SupportSet *> &sets, const ImageView &rgb) const;
    const Fingerprint &fingerprint() const { return fingerprint_; }
    const Manifest &manifest() const { return manifest_; }

    // The default set (add_support / segment / reset of the C API).
    void add_support(const ImageView &rgb, const ImageView &mask);
    std::shared_ptr<const SupportSet> default_set() const;
    void reset();

private:
    using Tensors = std::map<std::string, Ort::Value>;

    struct Graph {
        const GraphSpec *spec = nullptr;
        std::string name;
        std::unique_ptr<Ort::Session> session;
        std::vector<const char *> input_names, output_names;  // point into *spec, in manifest order
    };

    Graph load(const char *name, const GraphSpec &spec, int intra_op_threads);
    Tensors run(const Graph &graph, const std::map<std::string, const Ort::Value *> &feeds) const;
    Tensors encode_image(const ImageView &rgb) const;
    void check_support(const ImageView &rgb, const ImageView &mask) const;

    std::string dir_;
    ProviderConfig providers_;
    bool verify_sha256_;
    Manifest manifest_;
    Fingerprint fingerprint_;
    Graph image_encoder_, memory_encoder_, memory_attention_, mask_decoder_;
    Ort::MemoryInfo cpu_memory_;
    mutable std::mutex default_mutex_;
    std::shared_ptr<const SupportSet> default_set_;  // null = no supports
};

}  // namespace fssam2::detail
