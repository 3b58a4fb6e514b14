// The C API: argument checks, one mutex per handle, C++ exceptions turned into status codes and a
// per-thread message. Nothing C++ crosses this boundary.
#include <cstring>
#include <mutex>
#include <new>
#include <string>

#include "error.hpp"
#include "fssam2/fssam2.h"
#include "segmenter.hpp"

#ifndef FSSAM2_VERSION
#define FSSAM2_VERSION "unknown"
#endif

using fssam2::detail::Error;
using fssam2::detail::ImageView;

struct fssam2_segmenter {
    mutable std::mutex mutex;
    std::unique_ptr<fssam2::detail::Segmenter> impl;
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

}  // namespace

extern "C" {

const char *fssam2_version(void) { return FSSAM2_VERSION; }

const char *fssam2_last_error(void) { return last_error.c_str(); }

void fssam2_options_init(fssam2_options *options) {
    if (!options) return;
    std::memset(options, 0, sizeof(*options));
    options->struct_size = sizeof(fssam2_options);
    options->provider = "cpu";
    options->intra_op_threads = 0;
    options->verify_sha256 = 1;
}

fssam2_status fssam2_create(const char *artifacts_dir, const fssam2_options *options, fssam2_segmenter **out) {
    return guarded([&] {
        require(out, "out (fssam2_segmenter **)");
        *out = nullptr;
        require(artifacts_dir, "artifacts_dir");
        fssam2_options opts;
        fssam2_options_init(&opts);
        if (options) {
            if (options->struct_size != sizeof(fssam2_options))
                invalid("options.struct_size is " + std::to_string(options->struct_size) +
                        ", expected sizeof(fssam2_options) = " + std::to_string(sizeof(fssam2_options)) +
                        " (call fssam2_options_init)");
            opts = *options;
        }
        require(opts.provider, "options.provider");
        if (opts.intra_op_threads < 0) invalid("options.intra_op_threads must be >= 0");
        auto handle = std::make_unique<fssam2_segmenter>();
        handle->impl = std::make_unique<fssam2::detail::Segmenter>(artifacts_dir, opts.provider, opts.intra_op_threads,
                                                                   opts.verify_sha256 != 0);
        *out = handle.release();
    });
}

void fssam2_destroy(fssam2_segmenter *segmenter) { delete segmenter; }

fssam2_status fssam2_add_support(fssam2_segmenter *segmenter, const fssam2_view *image, const fssam2_view *mask) {
    return guarded([&] {
        require(segmenter, "segmenter");
        const ImageView rgb = checked_view(image, 3, "support image");
        const ImageView m = checked_view(mask, 1, "support mask");
        std::lock_guard<std::mutex> lock(segmenter->mutex);
        segmenter->impl->add_support(rgb, m);
    });
}

fssam2_status fssam2_segment(fssam2_segmenter *segmenter, const fssam2_view *query, uint8_t *mask_out,
                             size_t mask_out_size, float *logits_out, size_t logits_out_count, fssam2_result *result) {
    return guarded([&] {
        require(segmenter, "segmenter");
        const ImageView rgb = checked_view(query, 3, "query image");
        require(mask_out, "mask_out");
        const size_t n = static_cast<size_t>(rgb.width) * static_cast<size_t>(rgb.height);
        require_capacity(mask_out_size, n, "mask_out (query width*height bytes)");
        if (logits_out) require_capacity(logits_out_count, n, "logits_out (query width*height floats)");
        std::lock_guard<std::mutex> lock(segmenter->mutex);
        const fssam2::detail::SegmentOutput out = segmenter->impl->segment(rgb);
        for (size_t i = 0; i < n; ++i) mask_out[i] = out.logits[i] > 0.0f;
        if (logits_out) std::memcpy(logits_out, out.logits.data(), n * sizeof(float));
        if (result) *result = fssam2_result{out.score, out.object_score, segmenter->impl->num_supports()};
    });
}

fssam2_status fssam2_reset(fssam2_segmenter *segmenter) {
    return guarded([&] {
        require(segmenter, "segmenter");
        std::lock_guard<std::mutex> lock(segmenter->mutex);
        segmenter->impl->reset();
    });
}

fssam2_status fssam2_num_supports(const fssam2_segmenter *segmenter, int32_t *out) {
    return guarded([&] {
        require(segmenter, "segmenter");
        require(out, "out");
        std::lock_guard<std::mutex> lock(segmenter->mutex);
        *out = segmenter->impl->num_supports();
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
