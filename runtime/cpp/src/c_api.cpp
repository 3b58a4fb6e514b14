// The C API: argument checks, C++ exceptions turned into status codes and a per-thread message.
// Nothing C++ crosses this boundary, and no caller pointer is kept past a call.
#include <cstddef>
#include <cstring>
#include <new>
#include <string>

#include <algorithm>
#include <iterator>

#include "error.hpp"
#include "fssam2/fssam2.h"
#include "segmenter.hpp"

#ifndef FSSAM2_VERSION
#define FSSAM2_VERSION "unknown"
#endif

using fssam2::detail::Error;
using fssam2::detail::ImageView;
using fssam2::detail::SegmentOutput;
using fssam2::detail::SupportSet;

struct fssam2_segmenter {
    std::unique_ptr<fssam2::detail::Segmenter> impl;
};

struct fssam2_support_set {
    std::shared_ptr<const fssam2::detail::SupportSet> impl;
};

namespace {

thread_local std::string last_error;

fssam2_status fail(fssam2_status status, const std::string &message) {
    last_error = message;
    return status;
}

// Run `body` (which may throw) and map every exception to a status + message.
template <class F>
fssam2_status guarded(F &&body) {
    try {
        body();
        last_error.clear();
        return FSSAM2_OK;
    } catch (const Error &e) {
        return fail(e.status(), e.what());
    } catch (const Ort::Exception &e) {
        return fail(FSSAM2_ERR_RUNTIME, std::string("onnxruntime: ") + e.what());
    } catch (const std::bad_alloc &) {
        return fail(FSSAM2_ERR_OUT_OF_MEMORY, "out of memory");
    } catch (const std::exception &e) {
        return fail(FSSAM2_ERR_RUNTIME, e.what());
    } catch (...) {
        return fail(FSSAM2_ERR_RUNTIME, "unknown error");
    }
}

[[noreturn]] void invalid(const std::string &message) { throw Error(FSSAM2_ERR_INVALID_ARGUMENT, message); }

ImageView checked_view(const fssam2_view *v, int64_t channels, const char *what) {
    if (!v) invalid(std::string(what) + " is NULL");
    if (!v->data) invalid(std::string(what) + " has no pixel data (data is NULL)");
    if (v->width <= 0 || v->height <= 0)
        invalid(std::string(what) + " is empty or negative: " + std::to_string(v->width) + "x" + std::to_string(v->height));
    const int64_t row = int64_t{v->width} * channels;
    const int64_t stride = v->stride == 0 ? row : v->stride;
    if (stride < row)
        invalid(std::string(what) + " stride " + std::to_string(v->stride) + " is less than width*" +
                std::to_string(channels) + " = " + std::to_string(row));
    return ImageView{v->data, v->width, v->height, stride, channels};
}

void require(const void *p, const char *what) {
    if (!p) invalid(std::string(what) + " is NULL");
}

void require_capacity(size_t have, size_t need, const char *what) {
    if (have < need)
        invalid(std::string(what) + " holds " + std::to_string(have) + " elements, needs " + std::to_string(need));
}

// The option struct sizes callers may have been compiled with: every version's, oldest first.
constexpr size_t OPTIONS_V1_SIZE = offsetof(fssam2_options, device_id);
constexpr size_t OPTIONS_SIZES[] = {OPTIONS_V1_SIZE, sizeof(fssam2_options)};

void options_defaults(fssam2_options *o) {
    std::memset(o, 0, sizeof(*o));
    o->struct_size = sizeof(fssam2_options);
    o->provider = "cpu";
    o->verify_sha256 = 1;
    o->max_shots = fssam2::detail::DEFAULT_MAX_SHOTS;
}

// The caller's options over the defaults, for any known struct_size (a smaller one: an older caller).
fssam2_options effective_options(const fssam2_options *options) {
    fssam2_options o;
    options_defaults(&o);
    if (!options) return o;
    const size_t size = options->struct_size;
    if (std::find(std::begin(OPTIONS_SIZES), std::end(OPTIONS_SIZES), size) == std::end(OPTIONS_SIZES))
        invalid("options.struct_size is " + std::to_string(size) + ", not the size of any fssam2_options version (" +
                std::to_string(OPTIONS_V1_SIZE) + " .. " + std::to_string(sizeof(fssam2_options)) +
                "); call fssam2_options_init");
    std::memcpy(&o, options, size);
    o.struct_size = sizeof(fssam2_options);
    require(o.provider, "options.provider");
    if (o.intra_op_threads < 0) invalid("options.intra_op_threads must be >= 0");
    return o;
}

fssam2::detail::ProviderConfig provider_config(const fssam2_options &o) {
    fssam2::detail::ProviderConfig c;
    c.provider = o.provider;
    c.device_id = o.device_id;
    c.max_shots = o.max_shots;
    c.trt_cache_dir = o.trt_cache_dir ? o.trt_cache_dir : "";
    if (o.trt_workspace_bytes) c.workspace_bytes = o.trt_workspace_bytes;
    return c;
}

const SupportSet &checked_set(const fssam2_support_set *set, const char *what) {
    if (!set || !set->impl) invalid(std::string(what) + " is NULL");
    return *set->impl;
}

fssam2_support_set *new_set(std::shared_ptr<const SupportSet> impl) {
    auto handle = std::make_unique<fssam2_support_set>();
    handle->impl = std::move(impl);
    return handle.release();
}

void write_outputs(const SegmentOutput &out, size_t n, uint8_t *mask, float *logits) {
    if (mask)
        for (size_t i = 0; i < n; ++i) mask[i] = out.logits[i] > 0.0f;
    if (logits) std::memcpy(logits, out.logits.data(), n * sizeof(float));
}

// One query with `set`, or with a snapshot of the default set when `set` is NULL.
void segment_one(const fssam2_segmenter &segmenter, const SupportSet *set, const fssam2_view *query, uint8_t *mask_out,
                 size_t mask_out_size, float *logits_out, size_t logits_out_count, fssam2_result *result) {
    const ImageView rgb = checked_view(query, 3, "query image");
    require(mask_out, "mask_out");
    const size_t n = static_cast<size_t>(rgb.width) * static_cast<size_t>(rgb.height);
    require_capacity(mask_out_size, n, "mask_out (query width*height bytes)");
    if (logits_out) require_capacity(logits_out_count, n, "logits_out (query width*height floats)");
    std::shared_ptr<const SupportSet> snapshot;
    if (!set) {
        snapshot = segmenter.impl->default_set();
        if (!snapshot) throw Error(FSSAM2_ERR_STATE, "segment called before any add_support: add at least one annotated support");
        set = snapshot.get();
    }
    const SegmentOutput out = segmenter.impl->segment({set}, rgb).front();
    write_outputs(out, n, mask_out, logits_out);
    if (result) *result = fssam2_result{out.score, out.object_score, static_cast<int32_t>(set->shots)};
}

}  // namespace

extern "C" {

const char *fssam2_version(void) { return FSSAM2_VERSION; }

const char *fssam2_last_error(void) { return last_error.c_str(); }

void fssam2_options_init_sized(fssam2_options *options, uint32_t struct_size) {
    if (!options || struct_size < sizeof(uint32_t)) return;
    fssam2_options defaults;
    options_defaults(&defaults);
    std::memcpy(options, &defaults, std::min<size_t>(struct_size, sizeof(defaults)));
    options->struct_size = struct_size;
}

void(fssam2_options_init)(fssam2_options *options) { fssam2_options_init_sized(options, OPTIONS_V1_SIZE); }

fssam2_status fssam2_create(const char *artifacts_dir, const fssam2_options *options, fssam2_segmenter **out) {
    return guarded([&] {
        require(out, "out (fssam2_segmenter **)");
        *out = nullptr;
        require(artifacts_dir, "artifacts_dir");
        const fssam2_options opts = effective_options(options);
        auto handle = std::make_unique<fssam2_segmenter>();
        handle->impl = std::make_unique<fssam2::detail::Segmenter>(artifacts_dir, provider_config(opts),
                                                                   opts.intra_op_threads, opts.verify_sha256 != 0);
        *out = handle.release();
    });
}

void fssam2_destroy(fssam2_segmenter *segmenter) { delete segmenter; }

fssam2_status fssam2_add_support(fssam2_segmenter *segmenter, const fssam2_view *image, const fssam2_view *mask) {
    return guarded([&] {
        require(segmenter, "segmenter");
        const ImageView rgb = checked_view(image, 3, "support image");
        const ImageView m = checked_view(mask, 1, "support mask");
        segmenter->impl->add_support(rgb, m);
    });
}

fssam2_status fssam2_segment(fssam2_segmenter *segmenter, const fssam2_view *query, uint8_t *mask_out,
                             size_t mask_out_size, float *logits_out, size_t logits_out_count, fssam2_result *result) {
    return guarded([&] {
        require(segmenter, "segmenter");
        segment_one(*segmenter, nullptr, query, mask_out, mask_out_size, logits_out, logits_out_count, result);
    });
}

fssam2_status fssam2_segment_set(fssam2_segmenter *segmenter, const fssam2_support_set *set, const fssam2_view *query,
                                 uint8_t *mask_out, size_t mask_out_size, float *logits_out, size_t logits_out_count,
                                 fssam2_result *result) {
    return guarded([&] {
        require(segmenter, "segmenter");
        segment_one(*segmenter, &checked_set(set, "set"), query, mask_out, mask_out_size, logits_out, logits_out_count, result);
    });
}

fssam2_status fssam2_segment_sets(fssam2_segmenter *segmenter, const fssam2_support_set *const *sets, size_t num_sets,
                                  const fssam2_view *query, uint8_t *label_map_out, size_t label_map_size,
                                  uint8_t *masks_out, size_t masks_out_size, float *logits_out, size_t logits_out_count,
                                  fssam2_result *results) {
    return guarded([&] {
        require(segmenter, "segmenter");
        require(sets, "sets");
        if (num_sets < 1 || num_sets > 255) invalid("num_sets must be 1..255 (labels are bytes), got " + std::to_string(num_sets));
        std::vector<const SupportSet *> list;
        for (size_t i = 0; i < num_sets; ++i) list.push_back(&checked_set(sets[i], ("sets[" + std::to_string(i) + "]").c_str()));
        const ImageView rgb = checked_view(query, 3, "query image");
        require(label_map_out, "label_map_out");
        const size_t n = static_cast<size_t>(rgb.width) * static_cast<size_t>(rgb.height);
        require_capacity(label_map_size, n, "label_map_out (query width*height bytes)");
        if (masks_out) require_capacity(masks_out_size, num_sets * n, "masks_out (num_sets*width*height bytes)");
        if (logits_out) require_capacity(logits_out_count, num_sets * n, "logits_out (num_sets*width*height floats)");
        const std::vector<SegmentOutput> outs = segmenter->impl->segment(list, rgb);
        // The label rule: the highest positive logit wins, strictly greater, so ties keep the lower index.
        std::vector<float> best(n, 0.0f);
        std::memset(label_map_out, 0, n);
        for (size_t c = 0; c < num_sets; ++c) {
            const std::vector<float> &l = outs[c].logits;
            for (size_t i = 0; i < n; ++i)
                if (l[i] > best[i]) best[i] = l[i], label_map_out[i] = static_cast<uint8_t>(c + 1);
            write_outputs(outs[c], n, masks_out ? masks_out + c * n : nullptr, logits_out ? logits_out + c * n : nullptr);
            if (results) results[c] = fssam2_result{outs[c].score, outs[c].object_score, static_cast<int32_t>(list[c]->shots)};
        }
    });
}

fssam2_status fssam2_support_set_encode(fssam2_segmenter *segmenter, const fssam2_view *images, const fssam2_view *masks,
                                        size_t count, fssam2_support_set **out) {
    return guarded([&] {
        require(out, "out (fssam2_support_set **)");
        *out = nullptr;
        require(segmenter, "segmenter");
        require(images, "images");
        require(masks, "masks");
        if (count < 1) invalid("a support set needs at least one support (count is 0)");
        std::vector<fssam2::detail::Support> supports;
        for (size_t i = 0; i < count; ++i) {
            const std::string k = "[" + std::to_string(i) + "]";
            supports.push_back({checked_view(&images[i], 3, ("support image" + k).c_str()),
                                checked_view(&masks[i], 1, ("support mask" + k).c_str())});
        }
        *out = new_set(segmenter->impl->encode(supports));
    });
}

fssam2_status fssam2_support_set_load(const fssam2_segmenter *segmenter, const char *path, fssam2_support_set **out) {
    return guarded([&] {
        require(out, "out (fssam2_support_set **)");
        *out = nullptr;
        require(segmenter, "segmenter");
        require(path, "path");
        *out = new_set(std::make_shared<const SupportSet>(
            fssam2::detail::load_support_set(path, segmenter->impl->fingerprint())));
    });
}

fssam2_status fssam2_support_set_save(const fssam2_support_set *set, const char *path) {
    return guarded([&] {
        const SupportSet &s = checked_set(set, "set");
        require(path, "path");
        fssam2::detail::save_support_set(s, path, FSSAM2_VERSION);
    });
}

fssam2_status fssam2_support_set_combine(const fssam2_support_set *a, const fssam2_support_set *b, fssam2_support_set **out) {
    return guarded([&] {
        require(out, "out (fssam2_support_set **)");
        *out = nullptr;
        const SupportSet &x = checked_set(a, "a"), &y = checked_set(b, "b");
        *out = new_set(std::make_shared<const SupportSet>(fssam2::detail::combine(x, y)));
    });
}

fssam2_status fssam2_support_set_shots(const fssam2_support_set *set, int32_t *out) {
    return guarded([&] {
        const SupportSet &s = checked_set(set, "set");
        require(out, "out");
        *out = static_cast<int32_t>(s.shots);
    });
}

fssam2_status fssam2_support_set_from_default(const fssam2_segmenter *segmenter, fssam2_support_set **out) {
    return guarded([&] {
        require(out, "out (fssam2_support_set **)");
        *out = nullptr;
        require(segmenter, "segmenter");
        std::shared_ptr<const SupportSet> set = segmenter->impl->default_set();
        if (!set) throw Error(FSSAM2_ERR_STATE, "the default set is empty: add at least one support first");
        *out = new_set(std::move(set));
    });
}

void fssam2_support_set_free(fssam2_support_set *set) { delete set; }

fssam2_status fssam2_provider_options(const char *artifacts_dir, const fssam2_options *options, const char *graph,
                                      char *out, size_t out_size, size_t *needed) {
    return guarded([&] {
        if (needed) *needed = 0;
        require(artifacts_dir, "artifacts_dir");
        require(graph, "graph");
        const fssam2_options opts = effective_options(options);
        const fssam2::detail::Manifest m = fssam2::detail::load_manifest(artifacts_dir);
        const std::pair<const char *, const fssam2::detail::GraphSpec *> graphs[] = {
            {"image_encoder", &m.image_encoder}, {"memory_encoder", &m.memory_encoder},
            {"memory_attention", &m.memory_attention}, {"mask_decoder", &m.mask_decoder}};
        const fssam2::detail::GraphSpec *spec = nullptr;
        for (const auto &[name, g] : graphs)
            if (std::strcmp(name, graph) == 0) spec = g;
        if (!spec) invalid(std::string("unknown graph '") + graph + "'");
        std::string text;
        for (const auto &ep : fssam2::detail::execution_providers(provider_config(opts), artifacts_dir, *spec, m.tokens_per_support)) {
            if (ep.options.empty()) text += ep.name + "\n";
            for (const auto &[k, v] : ep.options) text += ep.name + "\t" + k + "\t" + v + "\n";
        }
        if (needed) *needed = text.size() + 1;
        require(out, "out");
        require_capacity(out_size, text.size() + 1, "out (bytes)");
        std::memcpy(out, text.c_str(), text.size() + 1);
    });
}

fssam2_status fssam2_reset(fssam2_segmenter *segmenter) {
    return guarded([&] {
        require(segmenter, "segmenter");
        segmenter->impl->reset();
    });
}

fssam2_status fssam2_num_supports(const fssam2_segmenter *segmenter, int32_t *out) {
    return guarded([&] {
        require(segmenter, "segmenter");
        require(out, "out");
        const std::shared_ptr<const SupportSet> set = segmenter->impl->default_set();
        *out = set ? static_cast<int32_t>(set->shots) : 0;
    });
}

fssam2_status fssam2_image_size(const fssam2_segmenter *segmenter, int32_t *out) {
    return guarded([&] {
        require(segmenter, "segmenter");
        require(out, "out");
        *out = static_cast<int32_t>(segmenter->impl->manifest().image_size);
    });
}

fssam2_status fssam2_preprocess(const fssam2_segmenter *segmenter, const fssam2_view *image, float *out,
                                size_t out_count) {
    return guarded([&] {
        require(segmenter, "segmenter");
        const ImageView rgb = checked_view(image, 3, "image");
        require(out, "out");
        const auto &m = segmenter->impl->manifest();
        require_capacity(out_count, static_cast<size_t>(3 * m.image_size * m.image_size), "out (3*S*S floats)");
        fssam2::detail::preprocess_image(rgb, m.image_size, m.mean, m.std, out);
    });
}

fssam2_status fssam2_resize_mask(const fssam2_view *mask, int32_t size, uint8_t *out, size_t out_size) {
    return guarded([&] {
        const ImageView m = checked_view(mask, 1, "mask");
        require(out, "out");
        if (size <= 0) invalid("size must be positive, got " + std::to_string(size));
        require_capacity(out_size, static_cast<size_t>(size) * static_cast<size_t>(size), "out (size*size bytes)");
        const std::vector<uint8_t> r = fssam2::detail::resize_mask(m, size);
        std::memcpy(out, r.data(), r.size());
    });
}

fssam2_status fssam2_postprocess_logits(const float *low_res, int32_t low_h, int32_t low_w, int32_t model_size,
                                        int32_t out_h, int32_t out_w, float *out, size_t out_count) {
    return guarded([&] {
        require(low_res, "low_res");
        require(out, "out");
        if (low_h <= 0 || low_w <= 0 || model_size <= 0 || out_h <= 0 || out_w <= 0)
            invalid("sizes must be positive");
        require_capacity(out_count, static_cast<size_t>(out_h) * static_cast<size_t>(out_w), "out (out_h*out_w floats)");
        const std::vector<float> r = fssam2::detail::postprocess_logits(low_res, low_h, low_w, model_size, out_h, out_w);
        std::memcpy(out, r.data(), r.size() * sizeof(float));
    });
}

}  // extern "C"
