// Checks of the C API's contract, run by tests/test_cpp.py (also as an ASan/UBSan build):
// every bad input gives its status code and a message and does not crash; a K=2 episode runs;
// two handles in two threads give the same results as serial runs; the C++ wrapper throws.
//   fssam2_capi_check ARTIFACTS_DIR BAD_ROOT
// BAD_ROOT holds broken artifact directories made by the test: no_manifest, not_json, schema99,
// missing_graph, corrupt_graph.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include <fssam2/fssam2.h>
#include <fssam2/fssam2.hpp>

namespace {

int failures = 0, checks = 0;

void expect(fssam2_status got, fssam2_status want, const std::string &what) {
    ++checks;
    const std::string message = fssam2_last_error();
    if (got != want) {
        ++failures;
        std::printf("FAIL %s: status %d, expected %d (%s)\n", what.c_str(), got, want, message.c_str());
    } else if (want != FSSAM2_OK && message.empty()) {
        ++failures;
        std::printf("FAIL %s: status %d but no message\n", what.c_str(), got);
    } else if (want != FSSAM2_OK) {
        std::printf("ok   %-44s -> %d: %s\n", what.c_str(), got, message.c_str());
    }
}

void expect_true(bool cond, const std::string &what) {
    ++checks;
    if (!cond) ++failures, std::printf("FAIL %s\n", what.c_str());
}

struct Picture {
    int w, h;
    std::vector<uint8_t> rgb, mask;
    fssam2_view image() const { return {rgb.data(), w, h, 0}; }
    fssam2_view mask_view() const { return {mask.data(), w, h, 0}; }
};

Picture picture(int w, int h, int seed) {
    Picture p{w, h, std::vector<uint8_t>(size_t(w) * h * 3), std::vector<uint8_t>(size_t(w) * h)};
    for (int y = 0; y < h; ++y)
        for (int x = 0; x < w; ++x) {
            const int dx = x - w / 2 - seed * 7, dy = y - h / 2 + seed * 5;
            const bool in = dx * dx + dy * dy < (h / 4) * (h / 4);
            uint8_t *px = &p.rgb[(size_t(y) * w + x) * 3];
            px[0] = in ? 210 : uint8_t((x * 3 + seed * 40) & 0xff);
            px[1] = in ? uint8_t(80 + (x % 9) * 8) : uint8_t((y * 5) & 0xff);
            px[2] = uint8_t((x * y + seed) & 0xff);
            p.mask[size_t(y) * w + x] = in ? 255 : 0;
        }
    return p;
}

// A K=2 episode on one handle; returns the query logits.
std::vector<float> episode(fssam2_segmenter *seg) {
    const Picture s0 = picture(200, 150, 0), s1 = picture(160, 190, 1), q = picture(230, 170, 2);
    fssam2_view i0 = s0.image(), m0 = s0.mask_view(), i1 = s1.image(), m1 = s1.mask_view(), qi = q.image();
    std::vector<uint8_t> mask(size_t(q.w) * q.h);
    std::vector<float> logits(mask.size());
    fssam2_result info{};
    if (fssam2_reset(seg) != FSSAM2_OK || fssam2_add_support(seg, &i0, &m0) != FSSAM2_OK ||
        fssam2_add_support(seg, &i1, &m1) != FSSAM2_OK ||
        fssam2_segment(seg, &qi, mask.data(), mask.size(), logits.data(), logits.size(), &info) != FSSAM2_OK) {
        std::printf("FAIL episode: %s\n", fssam2_last_error());
        ++failures;
        return {};
    }
    bool consistent = info.num_supports == 2;
    for (size_t i = 0; i < mask.size(); ++i) consistent = consistent && mask[i] == (logits[i] > 0.0f ? 1 : 0);
    expect_true(consistent, "mask == (logits > 0), num_supports == 2");
    return logits;
}

fssam2_options options(const char *provider, int verify) {
    fssam2_options o;
    fssam2_options_init(&o);
    o.provider = provider;
    o.verify_sha256 = verify;
    o.intra_op_threads = 1;
    return o;
}

}  // namespace

int main(int argc, char **argv) {
    if (argc != 3) {
        std::fprintf(stderr, "usage: fssam2_capi_check ARTIFACTS_DIR BAD_ROOT\n");
        return 2;
    }
    const std::string artifacts = argv[1], bad = argv[2];
    fssam2_segmenter *seg = nullptr;
    fssam2_options cpu = options("cpu", 1);

    // create: arguments, providers, broken artifacts
    expect(fssam2_create(nullptr, &cpu, &seg), FSSAM2_ERR_INVALID_ARGUMENT, "create(NULL dir)");
    expect(fssam2_create(artifacts.c_str(), &cpu, nullptr), FSSAM2_ERR_INVALID_ARGUMENT, "create(NULL out)");
    fssam2_options sized = cpu;
    sized.struct_size = 3;
    expect(fssam2_create(artifacts.c_str(), &sized, &seg), FSSAM2_ERR_INVALID_ARGUMENT, "create(options.struct_size 3)");
    fssam2_options unknown = options("quantum", 1);
    expect(fssam2_create(artifacts.c_str(), &unknown, &seg), FSSAM2_ERR_PROVIDER_UNAVAILABLE, "create(provider quantum)");
    for (const char *dir : {"no_manifest", "not_json", "schema99", "missing_graph", "corrupt_graph", "does_not_exist"})
        expect(fssam2_create((bad + "/" + dir).c_str(), &cpu, &seg), FSSAM2_ERR_MANIFEST, std::string("create(") + dir + ")");
    fssam2_options no_verify = options("cpu", 0);
    expect(fssam2_create((bad + "/corrupt_graph").c_str(), &no_verify, &seg), FSSAM2_ERR_RUNTIME,
           "create(corrupt_graph, verify_sha256=0)");
    expect_true(seg == nullptr, "failed create leaves *out NULL");

    expect(fssam2_create(artifacts.c_str(), &cpu, &seg), FSSAM2_OK, "create");
    expect_true(std::strlen(fssam2_last_error()) == 0, "success clears the message");
    const Picture p = picture(120, 90, 0);
    fssam2_view image = p.image(), mask = p.mask_view();
    std::vector<uint8_t> out(size_t(p.w) * p.h);
    std::vector<float> logits(out.size());

    // segment before any support, and bad query arguments
    expect(fssam2_segment(seg, &image, out.data(), out.size(), nullptr, 0, nullptr), FSSAM2_ERR_STATE, "segment before support");
    expect(fssam2_segment(nullptr, &image, out.data(), out.size(), nullptr, 0, nullptr), FSSAM2_ERR_INVALID_ARGUMENT, "segment(NULL segmenter)");
    expect(fssam2_segment(seg, nullptr, out.data(), out.size(), nullptr, 0, nullptr), FSSAM2_ERR_INVALID_ARGUMENT, "segment(NULL query)");
    expect(fssam2_segment(seg, &image, nullptr, out.size(), nullptr, 0, nullptr), FSSAM2_ERR_INVALID_ARGUMENT, "segment(NULL mask_out)");
    expect(fssam2_segment(seg, &image, out.data(), out.size() - 1, nullptr, 0, nullptr), FSSAM2_ERR_INVALID_ARGUMENT, "segment(mask_out too small)");
    expect(fssam2_segment(seg, &image, out.data(), out.size(), logits.data(), 5, nullptr), FSSAM2_ERR_INVALID_ARGUMENT, "segment(logits_out too small)");

    // add_support: null pointers, zero / negative sizes, strides, size mismatch, empty masks
    expect(fssam2_add_support(nullptr, &image, &mask), FSSAM2_ERR_INVALID_ARGUMENT, "add_support(NULL segmenter)");
    expect(fssam2_add_support(seg, nullptr, &mask), FSSAM2_ERR_INVALID_ARGUMENT, "add_support(NULL image)");
    expect(fssam2_add_support(seg, &image, nullptr), FSSAM2_ERR_INVALID_ARGUMENT, "add_support(NULL mask)");
    fssam2_view v = image;
    v.data = nullptr;
    expect(fssam2_add_support(seg, &v, &mask), FSSAM2_ERR_INVALID_ARGUMENT, "add_support(image.data NULL)");
    v = image, v.width = 0;
    expect(fssam2_add_support(seg, &v, &mask), FSSAM2_ERR_INVALID_ARGUMENT, "add_support(image width 0)");
    v = image, v.height = -4;
    expect(fssam2_add_support(seg, &v, &mask), FSSAM2_ERR_INVALID_ARGUMENT, "add_support(image height -4)");
    v = image, v.stride = p.w * 3 - 1;
    expect(fssam2_add_support(seg, &v, &mask), FSSAM2_ERR_INVALID_ARGUMENT, "add_support(image stride < 3*width)");
    v = mask, v.width = p.w - 1, v.stride = p.w;
    expect(fssam2_add_support(seg, &image, &v), FSSAM2_ERR_INVALID_ARGUMENT, "add_support(mask size mismatch)");
    const std::vector<uint8_t> empty(out.size(), 0);
    v = mask, v.data = empty.data();
    expect(fssam2_add_support(seg, &image, &v), FSSAM2_ERR_INVALID_ARGUMENT, "add_support(empty mask)");
    std::vector<uint8_t> speck(out.size(), 0);
    speck[size_t(p.w) * 45 + 61] = 1;  // one pixel that nearest-resizing to the model size skips
    v = mask, v.data = speck.data();
    int32_t size = 0;
    expect(fssam2_image_size(seg, &size), FSSAM2_OK, "image_size");
    std::vector<uint8_t> small(size_t(size) * size);
    expect(fssam2_resize_mask(&v, size, small.data(), small.size()), FSSAM2_OK, "resize_mask");
    bool vanishes = true;
    for (uint8_t b : small) vanishes = vanishes && b == 0;
    if (vanishes) expect(fssam2_add_support(seg, &image, &v), FSSAM2_ERR_INVALID_ARGUMENT, "add_support(mask vanishes)");
    int32_t n = -1;
    expect(fssam2_num_supports(seg, &n), FSSAM2_OK, "num_supports");
    expect_true(n == 0, "bad supports add nothing");
    expect(fssam2_num_supports(seg, nullptr), FSSAM2_ERR_INVALID_ARGUMENT, "num_supports(NULL out)");
    expect(fssam2_reset(nullptr), FSSAM2_ERR_INVALID_ARGUMENT, "reset(NULL)");
    expect(fssam2_preprocess(seg, &image, logits.data(), 10), FSSAM2_ERR_INVALID_ARGUMENT, "preprocess(out too small)");
    expect(fssam2_resize_mask(&mask, 0, small.data(), small.size()), FSSAM2_ERR_INVALID_ARGUMENT, "resize_mask(size 0)");
    expect(fssam2_postprocess_logits(nullptr, 4, 4, 8, 4, 4, logits.data(), logits.size()), FSSAM2_ERR_INVALID_ARGUMENT, "postprocess_logits(NULL)");

    // strided views give the same as packed ones; a real episode; reset
    std::vector<uint8_t> padded(size_t(p.w * 3 + 5) * p.h);
    for (int y = 0; y < p.h; ++y) std::memcpy(&padded[size_t(y) * (p.w * 3 + 5)], &p.rgb[size_t(y) * p.w * 3], p.w * 3);
    std::vector<float> a(size_t(3) * size * size), b(a.size());
    fssam2_view strided{padded.data(), p.w, p.h, p.w * 3 + 5};
    expect(fssam2_preprocess(seg, &image, a.data(), a.size()), FSSAM2_OK, "preprocess");
    expect(fssam2_preprocess(seg, &strided, b.data(), b.size()), FSSAM2_OK, "preprocess(strided)");
    expect_true(a == b, "strided view preprocesses like the packed one");
    for (const auto &[w, h] : {std::pair{300, 700}, std::pair{700, 300}, std::pair{size + 1, size}}) {  // both pass orders
        const Picture big = picture(w, h, 3);
        const fssam2_view big_view = big.image();
        expect(fssam2_preprocess(seg, &big_view, a.data(), a.size()), FSSAM2_OK, "preprocess(downscale)");
    }
    const std::vector<float> serial = episode(seg);
    expect(fssam2_reset(seg), FSSAM2_OK, "reset");
    expect(fssam2_segment(seg, &image, out.data(), out.size(), nullptr, 0, nullptr), FSSAM2_ERR_STATE, "segment after reset");

    // two handles, two threads, same results as serial; the message is per thread
    fssam2_segmenter *other = nullptr;
    expect(fssam2_create(artifacts.c_str(), &cpu, &other), FSSAM2_OK, "create second handle");
    std::vector<float> r1, r2;
    std::string thread_message = "unset";
    std::thread t1([&] { r1 = episode(seg); }), t2([&] {
        r2 = episode(other);
        thread_message = fssam2_last_error();
    });
    t1.join(), t2.join();
    expect_true(!serial.empty() && r1 == serial && r2 == serial, "two handles in two threads == serial (bitwise)");
    expect_true(thread_message.empty(), "fssam2_last_error is per thread");
    fssam2_destroy(other);
    fssam2_destroy(seg);
    fssam2_destroy(nullptr);

    // the C++ wrapper
    try {
        fssam2::Segmenter s(bad + "/schema99");
        expect_true(false, "C++ wrapper throws on schema99");
    } catch (const fssam2::Error &e) {
        expect_true(e.status() == FSSAM2_ERR_MANIFEST && std::strstr(e.what(), "schema") != nullptr,
                    "C++ wrapper throws fssam2::Error(MANIFEST) naming the schema");
    }
    try {
        fssam2::Segmenter s(artifacts, fssam2::Options{"cpu", 1, false});
        fssam2::Segmenter moved = std::move(s);
        moved.add_support(fssam2::Image{p.rgb.data(), p.w, p.h}, fssam2::Mask{p.mask.data(), p.w, p.h});
        const fssam2::Segmentation r = moved.segment(fssam2::Image{p.rgb.data(), p.w, p.h});
        expect_true(r.mask.size() == out.size() && r.logits.size() == out.size() && moved.num_supports() == 1,
                    "C++ wrapper: moved handle segments");
        moved.segment(fssam2::Image{nullptr, p.w, p.h});
        expect_true(false, "C++ wrapper throws on a NULL query");
    } catch (const fssam2::Error &e) {
        expect_true(e.status() == FSSAM2_ERR_INVALID_ARGUMENT, std::string("C++ wrapper error status: ") + e.what());
    }

    std::printf("%s: %d checks, %d failed\n", failures ? "FAILED" : "passed", checks, failures);
    return failures ? 1 : 0;
}
