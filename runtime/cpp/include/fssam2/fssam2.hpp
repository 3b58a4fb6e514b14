// Header-only C++17 wrapper over the libfssam2 C API: RAII handles, exceptions carrying the status.
//
//   fssam2::Segmenter seg("artifacts/");                  // or fssam2::Options{"cuda"}
//   seg.add_support(fssam2::Image{rgb, w, h}, fssam2::Mask{mask, w, h});
//   fssam2::Segmentation r = seg.segment(fssam2::Image{qrgb, qw, qh});   // r.mask: qw*qh bytes, 0/1
//
//   fssam2::SupportSet cats = seg.encode_supports({{image, mask}, ...});  // immutable value
//   cats.save("cats.fssam2");                                            // atomic
//   fssam2::SupportSet again = fssam2::SupportSet::load("cats.fssam2", seg);
//   fssam2::Segmentation c = seg.segment(query, cats);
//   fssam2::MultiSegmentation m = seg.segment(query, {&cats, &dogs});    // m.labels: 0 bg, 1 cats, 2 dogs
//
// Thread safety as in fssam2.h: one Segmenter may be used from many threads at once, with the same or
// different SupportSets (const methods); a SupportSet may be shared between threads.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <memory>
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
    int32_t device_id = 0;         // GPU ordinal ("cuda", "tensorrt")
    int32_t max_shots = 8;         // "tensorrt": the EP profile covers K = 1..max_shots
    std::string trt_cache_dir;     // "tensorrt": engine + timing caches ("" = <artifacts>/ort_trt_cache)
};

struct Segmentation {
    int32_t width = 0, height = 0;
    std::vector<uint8_t> mask;  // width*height, 1 = object
    std::vector<float> logits;  // width*height mask logits (mask = logits > 0)
    float score = 0;            // predicted IoU
    float object_score = 0;     // object-presence logit, reported not applied
};

// Per-class results of an N-way query and the label map (0 = background, 1 + i = sets[i]).
struct MultiSegmentation {
    int32_t width = 0, height = 0;
    std::vector<uint8_t> labels;          // width*height
    std::vector<Segmentation> classes;  // one per set, in order
};

class Segmenter;

// An immutable support set (fssam2.h): encode with Segmenter::encode_supports, or load a file.
class SupportSet {
public:
    static SupportSet load(const std::string &path, const Segmenter &segmenter);
    void save(const std::string &path) const { check(fssam2_support_set_save(handle_.get(), path.c_str())); }
    int32_t shots() const {
        int32_t k = 0;
        check(fssam2_support_set_shots(handle_.get(), &k));
        return k;
    }
    SupportSet operator+(const SupportSet &other) const {
        fssam2_support_set *out = nullptr;
        check(fssam2_support_set_combine(handle_.get(), other.handle_.get(), &out));
        return SupportSet(out);
    }
    const fssam2_support_set *handle() const noexcept { return handle_.get(); }
    explicit SupportSet(fssam2_support_set *owned) : handle_(owned, fssam2_support_set_free) {}

private:
    std::shared_ptr<fssam2_support_set> handle_;  // immutable: copies share it
};

class Segmenter {
public:
    explicit Segmenter(const std::string &artifacts_dir, const Options &options = Options()) {
        fssam2_options o;
        fssam2_options_init(&o);
        o.provider = options.provider.c_str();
        o.intra_op_threads = options.intra_op_threads;
        o.verify_sha256 = options.verify_sha256 ? 1 : 0;
        o.device_id = options.device_id;
        o.max_shots = options.max_shots;
        o.trt_cache_dir = options.trt_cache_dir.empty() ? nullptr : options.trt_cache_dir.c_str();
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
    Segmentation segment(const Image &query, bool with_logits = true) const { return segment_one(query, nullptr, with_logits); }

    // A new support set of these (image, mask) pairs, in order.
    SupportSet encode_supports(const std::vector<std::pair<Image, Mask>> &supports) const {
        std::vector<fssam2_view> images, masks;
        for (const auto &[image, mask] : supports) images.push_back(image.view()), masks.push_back(mask.view());
        fssam2_support_set *out = nullptr;
        check(fssam2_support_set_encode(handle_, images.data(), masks.data(), images.size(), &out));
        return SupportSet(out);
    }

    // One class: the query with `set`.
    Segmentation segment(const Image &query, const SupportSet &set, bool with_logits = true) const {
        return segment_one(query, &set, with_logits);
    }

    // N classes (one per set), one image encoding; per-class masks and logits, and the label map.
    MultiSegmentation segment(const Image &query, const std::vector<const SupportSet *> &sets, bool with_logits = true) const {
        MultiSegmentation m;
        m.width = query.width, m.height = query.height;
        const size_t n = pixels(query), k = sets.size();
        std::vector<const fssam2_support_set *> handles;
        for (const SupportSet *s : sets) handles.push_back(s ? s->handle() : nullptr);
        std::vector<uint8_t> masks(k * n);
        std::vector<float> logits(with_logits ? k * n : 0);
        std::vector<fssam2_result> info(k);
        m.labels.resize(n);
        const fssam2_view q = query.view();
        check(fssam2_segment_sets(handle_, handles.data(), k, &q, m.labels.data(), m.labels.size(), masks.data(), masks.size(),
                                  with_logits ? logits.data() : nullptr, logits.size(), info.data()));
        for (size_t c = 0; c < k; ++c) {
            Segmentation r;
            r.width = query.width, r.height = query.height;
            r.mask.assign(masks.begin() + c * n, masks.begin() + (c + 1) * n);
            if (with_logits) r.logits.assign(logits.begin() + c * n, logits.begin() + (c + 1) * n);
            r.score = info[c].score, r.object_score = info[c].object_score;
            m.classes.push_back(std::move(r));
        }
        return m;
    }

    // The supports added so far (add_support) as a set.
    SupportSet default_set() const {
        fssam2_support_set *out = nullptr;
        check(fssam2_support_set_from_default(handle_, &out));
        return SupportSet(out);
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
    static size_t pixels(const Image &q) { return q.width > 0 && q.height > 0 ? size_t(q.width) * size_t(q.height) : 0; }

    Segmentation segment_one(const Image &query, const SupportSet *set, bool with_logits) const {
        Segmentation r;
        r.width = query.width, r.height = query.height;
        r.mask.resize(pixels(query));
        if (with_logits) r.logits.resize(r.mask.size());
        const fssam2_view q = query.view();
        fssam2_result info{};
        float *logits = with_logits ? r.logits.data() : nullptr;
        check(set ? fssam2_segment_set(handle_, set->handle(), &q, r.mask.data(), r.mask.size(), logits, r.logits.size(), &info)
                  : fssam2_segment(handle_, &q, r.mask.data(), r.mask.size(), logits, r.logits.size(), &info));
        r.score = info.score, r.object_score = info.object_score;
        return r;
    }

    fssam2_segmenter *handle_ = nullptr;
};

inline SupportSet SupportSet::load(const std::string &path, const Segmenter &segmenter) {
    fssam2_support_set *out = nullptr;
    check(fssam2_support_set_load(segmenter.handle(), path.c_str(), &out));
    return SupportSet(out);
}

}  // namespace fssam2
