// manifest.json (schema 1 and 2), the contract between the exporter and every runtime: what
// runtime/manifest.py reads, in C++. Nothing about the model is known but what it says.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace fssam2::detail {

struct TensorSpec {
    std::string name;
    std::vector<int64_t> shape;  // -1 = dynamic axis (a string in the manifest)
    std::string dtype;
    std::vector<std::string> dim_names;  // per axis: the dynamic axis' name, "" for a fixed one
};

struct Flavour {
    std::string kind;  // "onnx" | "tensorrt-engine"
    std::string file;
    std::string sha256;
    std::vector<std::string> providers;  // runtime provider names or "*"
    std::string source_sha256;
};

struct Artifact {
    std::string file, sha256;
};

struct GraphSpec {
    std::string file;  // the standard ONNX graph
    std::string sha256;
    std::vector<TensorSpec> inputs;
    std::vector<TensorSpec> outputs;
    std::vector<Flavour> flavours;

    // The file to run on ONNX Runtime with `provider`: the first ONNX flavour made for it (or "*"),
    // else the standard graph (runtime/manifest.py's GraphSpec.artifact_for, limited to what ORT loads).
    Artifact artifact_for(const std::string &provider) const;
    const TensorSpec &input(const std::string &name) const;   // throws if absent
    const TensorSpec &output(const std::string &name) const;  // throws if absent
};

struct Manifest {
    int schema_version = 0;
    std::string model_name;  // model.name, e.g. "sam2.1_hiera_t"
    std::string weights;     // "sha256:<checkpoint_sha256>" or "random-init:seed=<seed>" (docs/support-sets.md)
    int64_t image_size = 0;
    float mean[3] = {0, 0, 0};  // float32, as numpy's np.asarray(mean, np.float32)
    float std[3] = {1, 1, 1};
    float mask_logit_scale = 0;
    float mask_logit_bias = 0;
    int64_t tokens_per_support = 0;
    int64_t low_res_size = 0;
    GraphSpec image_encoder, memory_encoder, memory_attention, mask_decoder;
};

// Read and validate dir/manifest.json; every graph file must exist (verify_artifact checks contents).
// Throws Error(FSSAM2_ERR_MANIFEST) naming the problem.
Manifest load_manifest(const std::string &dir);

// Throws Error(FSSAM2_ERR_MANIFEST) unless dir/artifact.file exists with artifact.sha256.
void verify_artifact(const std::string &dir, const std::string &graph, const Artifact &artifact);

}  // namespace fssam2::detail
