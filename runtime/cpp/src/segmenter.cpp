#include "segmenter.hpp"

#include <algorithm>

#include <onnxruntime_session_options_config_keys.h>

#include "error.hpp"

namespace fssam2::detail {
namespace {

// The same ONNX Runtime providers per runtime provider as runtime/backends.py's ORT_PROVIDERS.
const std::map<std::string, std::string> REQUIRED_EP = {
    {"cpu", "CPUExecutionProvider"}, {"cuda", "CUDAExecutionProvider"}, {"tensorrt", "TensorrtExecutionProvider"}};

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

void append_provider(Ort::SessionOptions &options, const std::string &provider) {
    auto it = REQUIRED_EP.find(provider);
    if (it == REQUIRED_EP.end())
        throw Error(FSSAM2_ERR_PROVIDER_UNAVAILABLE, "unknown provider '" + provider + "'; choose one of cpu, cuda, tensorrt");
    const std::vector<std::string> available = Ort::GetAvailableProviders();
    if (std::find(available.begin(), available.end(), it->second) == available.end()) {
        std::string offered;
        for (const auto &p : available) offered += (offered.empty() ? "" : ", ") + p;
        throw Error(FSSAM2_ERR_PROVIDER_UNAVAILABLE, "provider '" + provider + "' needs " + it->second +
                                                         ", but this ONNX Runtime offers " + offered +
                                                         "; build against an ONNX Runtime that has it (ONNXRUNTIME_ROOT)");
    }
    const OrtApi &api = Ort::GetApi();
    if (provider == "tensorrt") {  // TensorRT first, CUDA for the nodes TensorRT declines
        OrtTensorRTProviderOptionsV2 *trt = nullptr;
        Ort::ThrowOnError(api.CreateTensorRTProviderOptions(&trt));
        std::unique_ptr<OrtTensorRTProviderOptionsV2, void (*)(OrtTensorRTProviderOptionsV2 *)> guard(
            trt, Ort::GetApi().ReleaseTensorRTProviderOptions);
        options.AppendExecutionProvider_TensorRT_V2(*trt);
    }
    if (provider == "cuda" || provider == "tensorrt") {
        OrtCUDAProviderOptionsV2 *cuda = nullptr;
        Ort::ThrowOnError(api.CreateCUDAProviderOptions(&cuda));
        std::unique_ptr<OrtCUDAProviderOptionsV2, void (*)(OrtCUDAProviderOptionsV2 *)> guard(
            cuda, Ort::GetApi().ReleaseCUDAProviderOptions);
        options.AppendExecutionProvider_CUDA_V2(*cuda);
        // No node runs on the CPU EP behind the provider's back: ORT refuses the session instead (as
        // runtime/backends.py's NO_CPU_FALLBACK).
        options.AddConfigEntry(kOrtSessionOptionsDisableCPUEPFallback, "1");
    }
}

}  // namespace

Segmenter::Segmenter(const std::string &artifacts_dir, const std::string &provider, int intra_op_threads,
                     bool verify_sha256)
    : dir_(artifacts_dir),
      provider_(provider),
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
    memory_dim_ = memory_shape[2];
    const TensorSpec &image = manifest_.image_encoder.input("image");
    if (image.shape.size() != 4 || image.shape[2] != manifest_.image_size || image.shape[3] != manifest_.image_size)
        throw Error(FSSAM2_ERR_MANIFEST, "image_encoder input 'image' is " + shape_str(image.shape) +
                                             ", manifest image_size is " + std::to_string(manifest_.image_size));
    Ort::SessionOptions options;
    if (intra_op_threads > 0) options.SetIntraOpNumThreads(intra_op_threads);
    options.AddConfigEntry("session.use_env_allocators", "1");
    append_provider(options, provider);
    image_encoder_ = load("image_encoder", manifest_.image_encoder, options);
    memory_encoder_ = load("memory_encoder", manifest_.memory_encoder, options);
    memory_attention_ = load("memory_attention", manifest_.memory_attention, options);
    mask_decoder_ = load("mask_decoder", manifest_.mask_decoder, options);
}

Segmenter::Graph Segmenter::load(const char *name, const GraphSpec &spec, const Ort::SessionOptions &options) {
    Graph g{&spec, name, nullptr, {}, {}};
    for (const auto *list : {&spec.inputs, &spec.outputs})
        for (const TensorSpec &t : *list)
            if (t.dtype != "float32")
                throw Error(FSSAM2_ERR_MANIFEST, std::string("graph '") + name + "' tensor '" + t.name + "' is " + t.dtype +
                                                     "; libfssam2 exchanges float32 tensors only");
    const Artifact artifact = spec.artifact_for(provider_);
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

Segmenter::Tensors Segmenter::run(Graph &graph, const std::map<std::string, const Ort::Value *> &feeds) {
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

Segmenter::Tensors Segmenter::encode_image(const ImageView &rgb) {
    const int64_t s = manifest_.image_size;
    std::vector<float> x(static_cast<size_t>(3 * s * s));
    preprocess_image(rgb, s, manifest_.mean, manifest_.std, x.data());
    const int64_t shape[] = {1, 3, s, s};
    Ort::Value image = Ort::Value::CreateTensor<float>(cpu_memory_, x.data(), x.size(), shape, 4);
    return run(image_encoder_, {{"image", &image}});
}

void Segmenter::add_support(const ImageView &rgb, const ImageView &mask) {
    if (mask.width != rgb.width || mask.height != rgb.height)
        throw Error(FSSAM2_ERR_INVALID_ARGUMENT, "support mask is " + std::to_string(mask.width) + "x" +
                                                     std::to_string(mask.height) + " (WxH) but its image is " +
                                                     std::to_string(rgb.width) + "x" + std::to_string(rgb.height));
    bool any = false;
    for (int64_t y = 0; y < mask.height && !any; ++y)
        any = std::any_of(mask.row(y), mask.row(y) + mask.width, [](uint8_t v) { return v != 0; });
    if (!any)
        throw Error(FSSAM2_ERR_INVALID_ARGUMENT, "support mask is empty: a support must show at least one foreground pixel");
    const int64_t s = manifest_.image_size;
    const std::vector<uint8_t> small = resize_mask(mask, s);
    if (std::none_of(small.begin(), small.end(), [](uint8_t v) { return v != 0; }))
        throw Error(FSSAM2_ERR_INVALID_ARGUMENT, "support mask vanishes when resized to " + std::to_string(s) + "x" +
                                                     std::to_string(s) + ": object too small");
    Tensors feats = encode_image(rgb);
    std::vector<float> logits(small.size());
    for (size_t i = 0; i < small.size(); ++i)
        logits[i] = static_cast<float>(small[i]) * manifest_.mask_logit_scale + manifest_.mask_logit_bias;
    const int64_t shape[] = {1, 1, s, s};
    Ort::Value mask_logits = Ort::Value::CreateTensor<float>(cpu_memory_, logits.data(), logits.size(), shape, 4);
    Tensors out = run(memory_encoder_, {{"image_embed", &feats.at("image_embed")}, {"mask_logits", &mask_logits}});
    const Ort::Value &memory = out.at("memory"), &memory_pos = out.at("memory_pos");
    const std::vector<int64_t> mshape = memory.GetTensorTypeAndShapeInfo().GetShape();
    const std::vector<int64_t> expected = {1, manifest_.tokens_per_support, memory_dim_};
    if (mshape != expected || memory_pos.GetTensorTypeAndShapeInfo().GetShape() != expected)
        throw Error(FSSAM2_ERR_RUNTIME, "memory_encoder returned memory " + shape_str(mshape) + ", expected " +
                                            shape_str(expected) + " (manifest tokens_per_support)");
    const auto append = [](std::vector<float> &bank, const Ort::Value &value) {  // straight from ORT's buffer
        const float *data = value.GetTensorData<float>();
        bank.insert(bank.end(), data, data + value.GetTensorTypeAndShapeInfo().GetElementCount());
    };
    append(memory_, memory);
    append(memory_pos_, memory_pos);
    ++num_supports_;
}

SegmentOutput Segmenter::segment(const ImageView &rgb) {
    if (num_supports_ == 0)
        throw Error(FSSAM2_ERR_STATE, "segment called before any add_support: add at least one annotated support");
    Tensors feats = encode_image(rgb);
    const int64_t bank_shape[] = {1, num_supports_ * manifest_.tokens_per_support, memory_dim_};
    Ort::Value memory = Ort::Value::CreateTensor<float>(cpu_memory_, memory_.data(), memory_.size(), bank_shape, 3);
    Ort::Value memory_pos = Ort::Value::CreateTensor<float>(cpu_memory_, memory_pos_.data(), memory_pos_.size(), bank_shape, 3);
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
    return result;
}

void Segmenter::reset() {
    memory_.clear();
    memory_pos_.clear();
    num_supports_ = 0;
}

}  // namespace fssam2::detail
