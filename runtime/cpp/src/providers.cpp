#include "providers.hpp"

#include <algorithm>

#include "error.hpp"

namespace fssam2::detail {
namespace {

KeyValues cuda_options(int device_id) {  // = ort_gpu.cuda_ep_options
    return {{"device_id", std::to_string(device_id)}, {"do_copy_in_default_stream", "1"}, {"cudnn_conv_algo_search", "EXHAUSTIVE"}};
}

std::string dims(const std::vector<int64_t> &shape) {
    std::string s;
    for (size_t i = 0; i < shape.size(); ++i) s += (i ? "x" : "") + std::to_string(shape[i]);
    return s;
}

KeyValues tensorrt_options(const ProviderConfig &c, const std::string &cache_dir, const GraphSpec &graph, int64_t t) {
    KeyValues o = {{"device_id", std::to_string(c.device_id)},  // = ort_gpu.tensorrt_ep_options
                   {"trt_max_workspace_size", std::to_string(c.workspace_bytes)},
                   {"trt_engine_cache_enable", "True"},
                   {"trt_engine_cache_path", cache_dir},
                   {"trt_timing_cache_enable", "True"},
                   {"trt_timing_cache_path", cache_dir}};
    const int64_t range[3] = {t, std::min(DEFAULT_OPT_SHOTS, c.max_shots) * t, c.max_shots * t};  // profiles.memory_dim_ranges
    std::string shapes[3];
    for (const TensorSpec &input : graph.inputs) {  // = profiles.input_profiles: dynamic inputs only
        if (std::all_of(input.dim_names.begin(), input.dim_names.end(), [](const std::string &d) { return d.empty(); }))
            continue;
        for (int k = 0; k < 3; ++k) {
            std::vector<int64_t> shape = input.shape;
            for (size_t i = 0; i < shape.size(); ++i) {
                if (input.dim_names[i].empty()) continue;
                if (input.dim_names[i] != MEMORY_AXIS)
                    throw Error(FSSAM2_ERR_MANIFEST, "graph " + graph.file + " input '" + input.name + "' has dynamic axis '" +
                                                         input.dim_names[i] + "' with no TensorRT profile range (known: " +
                                                         MEMORY_AXIS + ")");
                shape[i] = range[k];
            }
            shapes[k] += (shapes[k].empty() ? "" : ",") + input.name + ":" + dims(shape);
        }
    }
    const char *keys[3] = {"trt_profile_min_shapes", "trt_profile_opt_shapes", "trt_profile_max_shapes"};
    for (int k = 0; k < 3; ++k)
        if (!shapes[k].empty()) o.emplace_back(keys[k], shapes[k]);
    return o;
}

}  // namespace

std::vector<ExecutionProvider> execution_providers(const ProviderConfig &c, const std::string &artifacts_dir,
                                                   const GraphSpec &graph, int64_t tokens_per_support) {
    if (c.device_id < 0) throw Error(FSSAM2_ERR_INVALID_ARGUMENT, "options.device_id must be >= 0, got " + std::to_string(c.device_id));
    if (c.max_shots < 1) throw Error(FSSAM2_ERR_INVALID_ARGUMENT, "options.max_shots must be >= 1, got " + std::to_string(c.max_shots));
    if (c.workspace_bytes <= 0) throw Error(FSSAM2_ERR_INVALID_ARGUMENT, "options.trt_workspace_bytes must be > 0");
    if (c.provider == "cpu") return {{"CPUExecutionProvider", {}}};
    if (c.provider == "cuda") return {{"CUDAExecutionProvider", cuda_options(c.device_id)}};  // no CPU (as ort_provider_list)
    if (c.provider == "tensorrt") {  // TensorRT first, CUDA for the nodes TensorRT declines; no CPU
        return {{"TensorrtExecutionProvider", tensorrt_options(c, trt_cache_dir(c, artifacts_dir), graph, tokens_per_support)},
                {"CUDAExecutionProvider", cuda_options(c.device_id)}};
    }
    throw Error(FSSAM2_ERR_PROVIDER_UNAVAILABLE, "unknown provider '" + c.provider + "'; choose one of cpu, cuda, tensorrt");
}

std::string trt_cache_dir(const ProviderConfig &c, const std::string &artifacts_dir) {
    if (!c.trt_cache_dir.empty()) return c.trt_cache_dir;
    std::string dir = artifacts_dir;
    while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
    return dir + "/" + ORT_TRT_CACHE_DIR;
}

int64_t max_memory_tokens(const ProviderConfig &c, int64_t tokens_per_support) {
    return c.provider == "tensorrt" ? int64_t{c.max_shots} * tokens_per_support : 0;
}

}  // namespace fssam2::detail
