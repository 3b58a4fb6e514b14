// The FS-SAM2 memory-bank loop over the four graphs on ONNX Runtime (= runtime/segmenter.py):
// each support is encoded once (image encoder -> memory encoder on its mask as logits) and its memory
// tokens appended to a contiguous bank; a query runs the image encoder, memory attention over the bank,
// and the mask decoder, and its logits are upsampled to the query's size.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include <onnxruntime_cxx_api.h>

#include "image.hpp"
#include "manifest.hpp"

namespace fssam2::detail {

struct SegmentOutput {
    std::vector<float> logits;  // (H, W) in the query's size; mask = logits > 0
    float score = 0;
    float object_score = 0;
};

class Segmenter {
public:
    Segmenter(const std::string &artifacts_dir, const std::string &provider, int intra_op_threads, bool verify_sha256);
    Segmenter(const Segmenter &) = delete;
    Segmenter &operator=(const Segmenter &) = delete;

    void add_support(const ImageView &rgb, const ImageView &mask);
    SegmentOutput segment(const ImageView &rgb);
    void reset();
    int num_supports() const { return num_supports_; }
    const Manifest &manifest() const { return manifest_; }

private:
    using Tensors = std::map<std::string, Ort::Value>;

    struct Graph {
        const GraphSpec *spec = nullptr;
        std::string name;
        std::unique_ptr<Ort::Session> session;
        std::vector<const char *> input_names, output_names;  // point into *spec, in manifest order
    };

    Graph load(const char *name, const GraphSpec &spec, const Ort::SessionOptions &options);
    Tensors run(Graph &graph, const std::map<std::string, const Ort::Value *> &feeds);
    Tensors encode_image(const ImageView &rgb);

    std::string dir_, provider_;
    bool verify_sha256_;
    Manifest manifest_;
    Graph image_encoder_, memory_encoder_, memory_attention_, mask_decoder_;
    Ort::MemoryInfo cpu_memory_;
    // The memory bank: every support's memory / memory_pos tokens, concatenated along the token axis.
    std::vector<float> memory_, memory_pos_;
    int64_t memory_dim_ = 0;
    int num_supports_ = 0;
};

}  // namespace fssam2::detail
