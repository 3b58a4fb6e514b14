// ONNX Runtime execution providers and their options per runtime provider: pure functions, the C++
// twin of runtime/backends.py's ORT_PROVIDERS and runtime/ort_gpu.py's ort_provider_list (tested
// against it without a GPU). TensorRT EP: engine + timing caches in a directory, explicit profiles for
// the memory axis (K = 1..max_shots supports, opt at min(5, max_shots)) as runtime/profiles.py makes them.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "manifest.hpp"

namespace fssam2::detail {

constexpr const char *MEMORY_AXIS = "num_memory_tokens";
constexpr int DEFAULT_MAX_SHOTS = 8, DEFAULT_OPT_SHOTS = 5;
constexpr int64_t DEFAULT_WORKSPACE_BYTES = int64_t{4} << 30;
constexpr const char *ORT_TRT_CACHE_DIR = "ort_trt_cache";  // beside the graphs, as runtime/ort_gpu.py

struct ProviderConfig {
    std::string provider = "cpu";  // cpu | cuda | tensorrt
    int device_id = 0;
    int max_shots = DEFAULT_MAX_SHOTS;
    std::string trt_cache_dir;  // "" = <artifacts>/ort_trt_cache
    int64_t workspace_bytes = DEFAULT_WORKSPACE_BYTES;
};

using KeyValues = std::vector<std::pair<std::string, std::string>>;
struct ExecutionProvider {
    std::string name;  // e.g. "TensorrtExecutionProvider"
    KeyValues options;
};

// The execution providers for `graph` in priority order, with their options (throws Error on a bad config).
std::vector<ExecutionProvider> execution_providers(const ProviderConfig &config, const std::string &artifacts_dir,
                                                   const GraphSpec &graph, int64_t tokens_per_support);

// Where the TensorRT EP keeps its engine and timing caches.
std::string trt_cache_dir(const ProviderConfig &config, const std::string &artifacts_dir);

// The largest memory length (tokens) the TensorRT EP profile admits; 0 = unbounded (other providers).
int64_t max_memory_tokens(const ProviderConfig &config, int64_t tokens_per_support);

}  // namespace fssam2::detail
