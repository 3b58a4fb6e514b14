// Header-only C++17 wrapper over the libfssam2 C API: RAII handle, exceptions carrying the status.
//
//   fssam2::Segmenter seg("artifacts/");                  // or fssam2::Options{"cuda"}
//   seg.add_support(fssam2::Image{rgb, w, h}, fssam2::Mask{mask, w, h});
//   fssam2::Segmentation r = seg.segment(fssam2::Image{qrgb, qw, qh});   // r.mask: qw*qh bytes, 0/1
//
// Thread safety as in fssam2.h: one Segmenter per thread runs in parallel; calls on one are serialised.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "fssam2.h"

namespace fssam2 {

class Error : public std::runtime_error {
public:
    Error(fssam2_status status, const std::string &message) : std::runtime_error(message), status_(status) {}
    fssam2_status status() const noexcept { return status_; }

private:
    fssam2_status status_;
};

inline void check(fssam2_status status) {
    if (status != FSSAM2_OK) throw Error(status, fssam2_last_error());
}

// Interleaved RGB8 pixels (stride in bytes, 0 = 3*width); the caller keeps them alive during the call.
struct Image {
    const uint8_t *data;
    int32_t width, height, stride = 0;
    fssam2_view view() const { return fssam2_view{data, width, height, stride}; }
};

// One byte per pixel, nonzero = object (stride in bytes, 0 = width).
struct Mask {
    const uint8_t *data;
    int32_t width, height, stride = 0;
    fssam2_view view() const { return fssam2_view{data, width, height, stride}; }
};

struct Options {
    std::string provider = "cpu";  // "cpu" | "cuda" | "tensorrt": an error where absent, never a CPU fallback
    int32_t intra_op_threads = 0;  // 0 = ONNX Runtime's default
    bool verify_sha256 = true;
};

struct Segmentation {
    int32_t width = 0, height = 0;
    std::vector<uint8_t> mask;  // width*height, 1 = object
    std::vector<float> logits;  // width*height mask logits (mask = logits > 0)
    float score = 0;            // predicted IoU
    float object_score = 0;     // object-presence logit, reported not applied
};

class Segmenter {
public:
    explicit Segmenter(const std::string &artifacts_dir, const Options &options = Options()) {
        fssam2_options o;
        fssam2_options_init(&o);
        o.provider = options.provider.c_str();
        o.intra_op_threads = options.intra_op_threads;
        o.verify_sha256 = options.verify_sha256 ? 1 : 0;
        check(fssam2_create(artifacts_dir.c_str(), &o, &handle_));
    }
    ~Segmenter() { fssam2_destroy(handle_); }
    Segmenter(const Segmenter &) = delete;
    Segmenter &operator=(const Segmenter &) = delete;
    Segmenter(Segmenter &&other) noexcept : handle_(std::exchange(other.handle_, nullptr)) {}
    Segmenter &operator=(Segmenter &&other) noexcept {
        if (this != &other) {
            fssam2_destroy(handle_);
            handle_ = std::exchange(other.handle_, nullptr);
        }
        return *this;
    }

    // Encode one annotated support into the memory bank (once; reused by every query).
    void add_support(const Image &image, const Mask &mask) {
        const fssam2_view i = image.view(), m = mask.view();
        check(fssam2_add_support(handle_, &i, &m));
    }

    // Segment a query from all supports so far; `with_logits` also returns the float logits.
    Segmentation segment(const Image &query, bool with_logits = true) {
        Segmentation r;
        r.width = query.width, r.height = query.height;
        const size_t n = query.width > 0 && query.height > 0 ? size_t(query.width) * size_t(query.height) : 0;
        r.mask.resize(n);
        if (with_logits) r.logits.resize(n);
        const fssam2_view q = query.view();
        fssam2_result info{};
        check(fssam2_segment(handle_, &q, r.mask.data(), r.mask.size(), with_logits ? r.logits.data() : nullptr,
                             r.logits.size(), &info));
        r.score = info.score, r.object_score = info.object_score;
        return r;
    }

    void reset() { check(fssam2_reset(handle_)); }
    int32_t num_supports() const {
        int32_t n = 0;
        check(fssam2_num_supports(handle_, &n));
        return n;
    }
    int32_t image_size() const {
        int32_t s = 0;
        check(fssam2_image_size(handle_, &s));
        return s;
    }
    fssam2_segmenter *handle() const noexcept { return handle_; }

private:
    fssam2_segmenter *handle_ = nullptr;
};

}  // namespace fssam2
