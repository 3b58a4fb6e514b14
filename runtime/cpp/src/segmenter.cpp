#include "segmenter.hpp"

#include <algorithm>
#include <filesystem>

#include <onnxruntime_session_options_config_keys.h>

#include "error.hpp"

namespace fssam2::detail {
namespace {

Ort::Env &env() {
    static Ort::Env instance(ORT_LOGGING_LEVEL_WARNING, "fssam2");
    // One CPU arena shared by every session that sets session.use_env_allocators, as runtime/backends.py does:
    // the process peaks at the largest graph's working set, not at the sum of one arena per graph.
    static const bool shared_arena = [] {
        instance.CreateAndRegisterAllocator(Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault), nullptr);
        return true;
    }();
    (void)shared_arena;
    return instance;
}

std::string shape_str(const std::vector<int64_t> &shape) {
    std::string s = "[";
    for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + (shape[i] < 0 ? std::string("?") : std::to_string(shape[i]));
    return s + "]";
}

// Never a silent CPU run: the provider's first execution provider must be in this ONNX Runtime.
void require_available(const std::string &ep, const std::string &provider) {
    const std::vector<std::string> available = Ort::GetAvailableProviders();
    if (std::find(available.begin(), available.end(), ep) == available.end()) {
        std::string offered;
        for (const auto &p : available) offered += (offered.empty() ? "" : ", ") + p;
        throw Error(FSSAM2_ERR_PROVIDER_UNAVAILABLE, "provider '" + provider + "' needs " + ep +
                                                         ", but this ONNX Runtime offers " + offered +
                                                         "; build against an ONNX Runtime that has it (ONNXRUNTIME_ROOT)");
    }
}

// Append the execution providers (as providers.cpp lists them) with their options.
void append_providers(Ort::SessionOptions &options, const std::vector<ExecutionProvider> &eps) {
    const OrtApi &api = Ort::GetApi();
    for (const ExecutionProvider &ep : eps) {
        std::vector<const char *> keys, values;
        for (const auto &[k, v] : ep.options) keys.push_back(k.c_str()), values.push_back(v.c_str());
        if (ep.name == "TensorrtExecutionProvider") {
            OrtTensorRTProviderOptionsV2 *trt = nullptr;
            Ort::ThrowOnError(api.CreateTensorRTProviderOptions(&trt));
            std::unique_ptr<OrtTensorRTProviderOptionsV2, void (*)(OrtTensorRTProviderOptionsV2 *)> guard(
                trt, api.ReleaseTensorRTProviderOptions);
            Ort::ThrowOnError(api.UpdateTensorRTProviderOptions(trt, keys.data(), values.data(), keys.size()));
            options.AppendExecutionProvider_TensorRT_V2(*trt);
        } else if (ep.name == "CUDAExecutionProvider") {
            OrtCUDAProviderOptionsV2 *cuda = nullptr;
            Ort::ThrowOnError(api.CreateCUDAProviderOptions(&cuda));
            std::unique_ptr<OrtCUDAProviderOptionsV2, void (*)(OrtCUDAProviderOptionsV2 *)> guard(cuda, api.ReleaseCUDAProviderOptions);
            Ort::ThrowOnError(api.UpdateCUDAProviderOptions(cuda, keys.data(), values.data(), keys.size()));
            options.AppendExecutionProvider_CUDA_V2(*cuda);
        }  // CPUExecutionProvider: ORT's own, always there
    }
    if (eps.front().name != "CPUExecutionProvider") {
        // No node runs on the CPU EP behind a GPU provider's back: ORT refuses the session instead (as
        // runtime/backends.py does).
        options.AddConfigEntry(kOrtSessionOptionsDisableCPUEPFallback, "1");
    }
}

}  // namespace

Segmenter::Segmenter(const std::string &artifacts_dir, const ProviderConfig &providers, int intra_op_threads,
                     bool verify_sha256)
    : dir_(artifacts_dir),
      providers_(providers),
      verify_sha256_(verify_sha256),
      manifest_(load_manifest(artifacts_dir)),  // load() checks the sha256 of the files this provider runs
      cpu_memory_(Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault)) {
    // The graphs' contract (as in runtime/segmenter.py), checked on the manifest before any session is built.
    const std::pair<const GraphSpec *, std::vector<const char *>> contract[] = {
        {&manifest_.image_encoder, {"image", "high_res_feat0", "high_res_feat1", "image_embed", "image_pos"}},
        {&manifest_.memory_encoder, {"image_embed", "mask_logits", "memory", "memory_pos"}},
        {&manifest_.memory_attention, {"image_embed", "image_pos", "memory", "memory_pos", "conditioned_embed"}},
        {&manifest_.mask_decoder, {"conditioned_embed", "high_res_feat0", "high_res_feat1", "low_res_logits", "iou_score",
                                   "object_score_logits"}}};
    for (const auto &[spec, names] : contract)
        for (const char *n : names) {
            const bool found = std::any_of(spec->inputs.begin(), spec->inputs.end(), [&](auto &t) { return t.name == n; }) ||
                               std::any_of(spec->outputs.begin(), spec->outputs.end(), [&](auto &t) { return t.name == n; });
            if (!found) throw Error(FSSAM2_ERR_MANIFEST, "graph " + spec->file + " lacks tensor '" + n + "' in the manifest");
        }
    const std::vector<int64_t> &memory_shape = manifest_.memory_encoder.output("memory").shape;
    if (memory_shape.size() != 3 || memory_shape[2] <= 0)
        throw Error(FSSAM2_ERR_MANIFEST, "memory_encoder output 'memory' is " + shape_str(memory_shape) +
                                             "; expected [1, tokens, channels] with a fixed channel count");
    fingerprint_ = Fingerprint::of(manifest_);
    const TensorSpec &image = manifest_.image_encoder.input("image");
    if (image.shape.size() != 4 || image.shape[2] != manifest_.image_size || image.shape[3] != manifest_.image_size)
        throw Error(FSSAM2_ERR_MANIFEST, "image_encoder input 'image' is " + shape_str(image.shape) +
                                             ", manifest image_size is " + std::to_string(manifest_.image_size));
    require_available(execution_providers(providers_, dir_, manifest_.mask_decoder, 1).front().name, providers_.provider);
    if (providers_.provider == "tensorrt") {
        const std::string cache = trt_cache_dir(providers_, dir_);
        std::error_code ec;
        std::filesystem::create_directories(cache, ec);
        if (ec) throw Error(FSSAM2_ERR_RUNTIME, "cannot create the TensorRT EP cache " + cache + " (" + ec.message() +
                                                    "); set options.trt_cache_dir");
    }
    image_encoder_ = load("image_encoder", manifest_.image_encoder, intra_op_threads);
    memory_encoder_ = load("memory_encoder", manifest_.memory_encoder, intra_op_threads);
    memory_attention_ = load("memory_attention", manifest_.memory_attention, intra_op_threads);
    mask_decoder_ = load("mask_decoder", manifest_.mask_decoder, intra_op_threads);
}

Segmenter::Graph Segmenter::load(const char *name, const GraphSpec &spec, int intra_op_threads) {
    Ort::SessionOptions options;  // per graph: the TensorRT EP's profiles differ between graphs
    if (intra_op_threads > 0) options.SetIntraOpNumThreads(intra_op_threads);
    options.AddConfigEntry("session.use_env_allocators", "1");
    append_providers(options, execution_providers(providers_, dir_, spec, manifest_.tokens_per_support));
    Graph g{&spec, name, nullptr, {}, {}};
    for (const auto *list : {&spec.inputs, &spec.outputs})
        for (const TensorSpec &t : *list)
            if (t.dtype != "float32")
                throw Error(FSSAM2_ERR_MANIFEST, std::string("graph '") + name + "' tensor '" + t.name + "' is " + t.dtype +
                                                     "; libfssam2 exchanges float32 tensors only");
    const Artifact artifact = spec.artifact_for(providers_.provider);
    if (verify_sha256_) verify_artifact(dir_, name, artifact);
    const std::string path = dir_ + "/" + artifact.file;
    try {
        g.session = std::make_unique<Ort::Session>(env(), path.c_str(), options);
    } catch (const Ort::Exception &e) {
        throw Error(FSSAM2_ERR_RUNTIME, "onnxruntime could not load " + path + ": " + e.what());
    }
    Ort::AllocatorWithDefaultOptions allocator;
    std::vector<std::string> session_inputs;
    for (size_t i = 0; i < g.session->GetInputCount(); ++i)
        session_inputs.push_back(g.session->GetInputNameAllocated(i, allocator).get());
    for (const TensorSpec &t : spec.inputs) {
        if (std::find(session_inputs.begin(), session_inputs.end(), t.name) == session_inputs.end())
            throw Error(FSSAM2_ERR_MANIFEST, path + " has no input '" + t.name + "' named in the manifest");
        g.input_names.push_back(t.name.c_str());
    }
    if (session_inputs.size() != spec.inputs.size())
        throw Error(FSSAM2_ERR_MANIFEST, path + " has " + std::to_string(session_inputs.size()) +
                                             " inputs, the manifest lists " + std::to_string(spec.inputs.size()));
    for (const TensorSpec &t : spec.outputs) g.output_names.push_back(t.name.c_str());
    return g;
}

Segmenter::Tensors Segmenter::run(const Graph &graph, const std::map<std::string, const Ort::Value *> &feeds) const {
    std::vector<Ort::Value> inputs;
    inputs.reserve(graph.spec->inputs.size());
    for (const TensorSpec &t : graph.spec->inputs) {  // = runtime/segmenter.py's _check_feeds
        auto it = feeds.find(t.name);
        if (it == feeds.end()) throw Error(FSSAM2_ERR_RUNTIME, graph.name + ": no value for input '" + t.name + "'");
        const std::vector<int64_t> shape = it->second->GetTensorTypeAndShapeInfo().GetShape();
        bool ok = shape.size() == t.shape.size();
        for (size_t i = 0; ok && i < shape.size(); ++i) ok = t.shape[i] < 0 || t.shape[i] == shape[i];
        if (!ok)
            throw Error(FSSAM2_ERR_RUNTIME, graph.name + ": input '" + t.name + "' is " + shape_str(shape) +
                                                ", manifest says " + shape_str(t.shape));
        // A non-owning view of the same buffer: Run takes values, not pointers.
        inputs.push_back(Ort::Value::CreateTensor<float>(cpu_memory_, const_cast<float *>(it->second->GetTensorData<float>()),
                                                         it->second->GetTensorTypeAndShapeInfo().GetElementCount(),
                                                         shape.data(), shape.size()));
    }
    std::vector<Ort::Value> outputs;
    try {
        outputs = graph.session->Run(Ort::RunOptions{nullptr}, graph.input_names.data(), inputs.data(), inputs.size(),
                                     graph.output_names.data(), graph.output_names.size());
    } catch (const Ort::Exception &e) {
        throw Error(FSSAM2_ERR_RUNTIME, graph.name + " failed in onnxruntime: " + e.what());
    }
    Tensors result;
    for (size_t i = 0; i < outputs.size(); ++i) {
        if (outputs[i].GetTensorTypeAndShapeInfo().GetElementType() != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT)
            throw Error(FSSAM2_ERR_RUNTIME, graph.name + ": output '" + graph.output_names[i] + "' is not float32");
        result.emplace(graph.output_names[i], std::move(outputs[i]));
    }
    return result;
}

Segmenter::Tensors Segmenter::encode_image(const ImageView &rgb) const {
    const int64_t s = manifest_.image_size;
    std::vector<float> x(static_cast<size_t>(3 * s * s));
    preprocess_image(rgb, s, manifest_.mean, manifest_.std, x.data());
    const int64_t shape[] = {1, 3, s, s};
    Ort::Value image = Ort::Value::CreateTensor<float>(cpu_memory_, x.data(), x.size(), shape, 4);
    return run(image_encoder_, {{"image", &image}});
}

void Segmenter::check_support(const ImageView &rgb, const ImageView &mask) const {
    if (mask.width != rgb.width || mask.height != rgb.height)
        throw Error(FSSAM2_ERR_INVALID_ARGUMENT, "support mask is " + std::to_string(mask.width) + "x" +
                                                     std::to_string(mask.height) + " (WxH) but its image is " +
                                                     std::to_string(rgb.width) + "x" + std::to_string(rgb.height));
    bool any = false;
    for (int64_t y = 0; y < mask.height && !any; ++y)
        any = std::any_of(mask.row(y), mask.row(y) + mask.width, [](uint8_t v) { return v != 0; });
    if (!any)
        throw Error(FSSAM2_ERR_INVALID_ARGUMENT, "support mask is empty: a support must show at least one foreground pixel");
}

std::shared_ptr<const SupportSet> Segmenter::encode(const std::vector<Support> &supports) const {
    if (supports.empty()) throw Error(FSSAM2_ERR_INVALID_ARGUMENT, "a support set needs at least one support");
    for (const Support &s : supports) check_support(s.image, s.mask);  // all checked before any is encoded
    const int64_t s = manifest_.image_size, t = manifest_.tokens_per_support, c = fingerprint_.channels;
    auto set = std::make_shared<SupportSet>();
    set->fingerprint = fingerprint_;
    set->memory.reserve(supports.size() * t * c);
    set->memory_pos.reserve(supports.size() * t * c);
    for (const Support &support : supports) {
        const std::vector<uint8_t> small = resize_mask(support.mask, s);
        if (std::none_of(small.begin(), small.end(), [](uint8_t v) { return v != 0; }))
            throw Error(FSSAM2_ERR_INVALID_ARGUMENT, "support mask vanishes when resized to " + std::to_string(s) + "x" +
                                                         std::to_string(s) + ": object too small");
        Tensors feats = encode_image(support.image);
        std::vector<float> logits(small.size());
        for (size_t i = 0; i < small.size(); ++i)
            logits[i] = static_cast<float>(small[i]) * manifest_.mask_logit_scale + manifest_.mask_logit_bias;
        const int64_t shape[] = {1, 1, s, s};
        Ort::Value mask_logits = Ort::Value::CreateTensor<float>(cpu_memory_, logits.data(), logits.size(), shape, 4);
        Tensors out = run(memory_encoder_, {{"image_embed", &feats.at("image_embed")}, {"mask_logits", &mask_logits}});
        const Ort::Value &memory = out.at("memory"), &memory_pos = out.at("memory_pos");
        const std::vector<int64_t> mshape = memory.GetTensorTypeAndShapeInfo().GetShape();
        const std::vector<int64_t> expected = {1, t, c};
        if (mshape != expected || memory_pos.GetTensorTypeAndShapeInfo().GetShape() != expected)
            throw Error(FSSAM2_ERR_RUNTIME, "memory_encoder returned memory " + shape_str(mshape) + ", expected " +
                                                shape_str(expected) + " (manifest tokens_per_support)");
        const auto append = [](std::vector<float> &bank, const Ort::Value &value) {  // straight from ORT's buffer
            const float *data = value.GetTensorData<float>();
            bank.insert(bank.end(), data, data + value.GetTensorTypeAndShapeInfo().GetElementCount());
        };
        append(set->memory, memory);
        append(set->memory_pos, memory_pos);
        int64_t area = 0;
        for (int64_t y = 0; y < support.mask.height; ++y)
            area += std::count_if(support.mask.row(y), support.mask.row(y) + support.mask.width, [](uint8_t v) { return v != 0; });
        set->image_sizes.push_back(static_cast<int32_t>(support.image.height));
        set->image_sizes.push_back(static_cast<int32_t>(support.image.width));
        set->mask_areas.push_back(area);
        ++set->shots;
    }
    return set;
}

std::vector<SegmentOutput> Segmenter::segment(const std::vector<const SupportSet *> &sets, const ImageView &rgb) const {
    const int64_t limit = max_memory_tokens(providers_, manifest_.tokens_per_support);
    for (const SupportSet *set : sets) {
        if (!set || set->shots < 1) throw Error(FSSAM2_ERR_STATE, "segment needs a support set with at least one support");
        if (!(set->fingerprint == fingerprint_))
            throw Error(FSSAM2_ERR_SUPPORT_SET, "the support set was made by other artifacts (another model, weights or image size)");
        if (limit && set->tokens() > limit)  // = profiles.check_memory_length
            throw Error(FSSAM2_ERR_INVALID_ARGUMENT, std::to_string(set->shots) + " supports exceed the TensorRT EP profile: up to " +
                                                         std::to_string(providers_.max_shots) + " supports; create the segmenter with a larger options.max_shots");
    }
    Tensors feats = encode_image(rgb);  // once for every set
    std::vector<SegmentOutput> results;
    results.reserve(sets.size());
    for (const SupportSet *set : sets) {
        const int64_t bank_shape[] = {1, set->tokens(), fingerprint_.channels};
        // Non-owning views of the set's (immutable) tokens: ORT only reads inputs.
        Ort::Value memory = Ort::Value::CreateTensor<float>(cpu_memory_, const_cast<float *>(set->memory.data()),
                                                            set->memory.size(), bank_shape, 3);
        Ort::Value memory_pos = Ort::Value::CreateTensor<float>(cpu_memory_, const_cast<float *>(set->memory_pos.data()),
                                                                set->memory_pos.size(), bank_shape, 3);
        Tensors cond = run(memory_attention_, {{"image_embed", &feats.at("image_embed")},
                                               {"image_pos", &feats.at("image_pos")},
                                               {"memory", &memory},
                                               {"memory_pos", &memory_pos}});
        Tensors dec = run(mask_decoder_, {{"conditioned_embed", &cond.at("conditioned_embed")},
                                          {"high_res_feat0", &feats.at("high_res_feat0")},
                                          {"high_res_feat1", &feats.at("high_res_feat1")}});
        const Ort::Value &low = dec.at("low_res_logits");
        const std::vector<int64_t> low_shape = low.GetTensorTypeAndShapeInfo().GetShape();
        if (low_shape.size() != 4 || low_shape[0] != 1 || low_shape[1] != 1)
            throw Error(FSSAM2_ERR_RUNTIME, "mask_decoder returned low_res_logits " + shape_str(low_shape) + ", expected [1, 1, h, w]");
        SegmentOutput result;
        result.logits = postprocess_logits(low.GetTensorData<float>(), low_shape[2], low_shape[3], manifest_.image_size,
                                           rgb.height, rgb.width);
        result.score = dec.at("iou_score").GetTensorData<float>()[0];
        result.object_score = dec.at("object_score_logits").GetTensorData<float>()[0];
        results.push_back(std::move(result));
    }
    return results;
}

void Segmenter::add_support(const ImageView &rgb, const ImageView &mask) {
    std::shared_ptr<const SupportSet> one = encode({{rgb, mask}});  // unlocked: concurrent queries keep running
    std::lock_guard<std::mutex> lock(default_mutex_);
    default_set_ = default_set_ ? std::make_shared<const SupportSet>(combine(*default_set_, *one)) : one;
}

std::shared_ptr<const SupportSet> Segmenter::default_set() const {
    std::lock_guard<std::mutex> lock(default_mutex_);
    return default_set_;
}

void Segmenter::reset() {
    std::lock_guard<std::mutex> lock(default_mutex_);
    default_set_.reset();
}

}  // namespace fssam2::detail
