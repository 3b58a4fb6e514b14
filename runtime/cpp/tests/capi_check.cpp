// Checks of the C API's contract, run by tests/test_cpp.py (also as an ASan/UBSan build):
// every bad input gives its status code and a message and does not crash; a K=2 episode runs;
// two handles in two threads give the same results as serial runs; support sets (encode, save/load,
// combine, N-way) give the default set's results bit for bit; one handle from many threads with
// different sets equals serial; an older caller's smaller options struct gets defaults; the C++ wrapper.
//   fssam2_capi_check ARTIFACTS_DIR BAD_ROOT
// BAD_ROOT holds broken artifact directories made by the test: no_manifest, not_json, schema99,
// missing_graph, corrupt_graph; support-set files are written there too.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstddef>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <fssam2/fssam2.h>
#include <fssam2/fssam2.hpp>

namespace {

std::atomic<int> failures{0}, checks{0};  // counted from several threads

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

// fssam2_options as 0.1 declared it: what a caller built against 0.1 passes.
struct options_v1 {
    uint32_t struct_size;
    const char *provider;
    int32_t intra_op_threads;
    int32_t verify_sha256;
};

using SetPtr = std::unique_ptr<fssam2_support_set, void (*)(fssam2_support_set *)>;

SetPtr encode(fssam2_segmenter *seg, const std::vector<const Picture *> &supports) {
    std::vector<fssam2_view> images, masks;
    for (const Picture *p : supports) images.push_back(p->image()), masks.push_back(p->mask_view());
    fssam2_support_set *set = nullptr;
    if (fssam2_support_set_encode(seg, images.data(), masks.data(), images.size(), &set) != FSSAM2_OK)
        std::printf("FAIL encode: %s\n", fssam2_last_error()), ++failures;
    return SetPtr(set, fssam2_support_set_free);
}

std::vector<float> segment_with(fssam2_segmenter *seg, const fssam2_support_set *set, const Picture &q, int32_t *shots = nullptr) {
    fssam2_view qi = q.image();
    std::vector<uint8_t> mask(size_t(q.w) * q.h);
    std::vector<float> logits(mask.size());
    fssam2_result info{};
    const fssam2_status st = set ? fssam2_segment_set(seg, set, &qi, mask.data(), mask.size(), logits.data(), logits.size(), &info)
                                 : fssam2_segment(seg, &qi, mask.data(), mask.size(), logits.data(), logits.size(), &info);
    if (st != FSSAM2_OK) {
        std::printf("FAIL segment: %s\n", fssam2_last_error()), ++failures;
        return {};
    }
    if (shots) *shots = info.num_supports;
    return logits;
}

std::string provider_options(const std::string &artifacts, const fssam2_options *o, const char *graph) {
    size_t needed = 0;
    if (fssam2_provider_options(artifacts.c_str(), o, graph, nullptr, 0, &needed) != FSSAM2_ERR_INVALID_ARGUMENT || !needed)
        return "FAIL: " + std::string(fssam2_last_error());
    std::string text(needed, '\0');
    if (fssam2_provider_options(artifacts.c_str(), o, graph, text.data(), text.size(), nullptr) != FSSAM2_OK)
        return "FAIL: " + std::string(fssam2_last_error());
    text.pop_back();
    return text;
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

    // support sets: the default set's results, bit for bit, however the set was made
    const Picture s0 = picture(200, 150, 0), s1 = picture(160, 190, 1), q = picture(230, 170, 2), s3 = picture(150, 150, 3);
    SetPtr both = encode(seg, {&s0, &s1}), first = encode(seg, {&s0}), second = encode(seg, {&s1}), other_class = encode(seg, {&s3});
    int32_t shots = 0;
    expect_true(segment_with(seg, both.get(), q, &shots) == serial && shots == 2, "segment_set(encoded K=2) == default set (bitwise)");
    fssam2_support_set *combined = nullptr;
    expect(fssam2_support_set_combine(first.get(), second.get(), &combined), FSSAM2_OK, "support_set_combine");
    SetPtr combined_ptr(combined, fssam2_support_set_free);
    expect_true(segment_with(seg, combined, q) == serial, "combine(s0, s1) == encode(s0, s1) (bitwise)");
    const std::string set_path = bad + "/both.fssam2";
    expect(fssam2_support_set_save(both.get(), set_path.c_str()), FSSAM2_OK, "support_set_save");
    expect(fssam2_support_set_save(both.get(), set_path.c_str()), FSSAM2_OK, "support_set_save (replace)");
    fssam2_support_set *loaded = nullptr;
    expect(fssam2_support_set_load(seg, set_path.c_str(), &loaded), FSSAM2_OK, "support_set_load");
    SetPtr loaded_ptr(loaded, fssam2_support_set_free);
    expect_true(segment_with(seg, loaded, q) == serial, "saved + loaded set == encoded set (bitwise)");
    expect(fssam2_support_set_shots(loaded, &shots), FSSAM2_OK, "support_set_shots");
    expect_true(shots == 2, "loaded set has K=2");
    // bad support-set input
    fssam2_support_set *none = nullptr;
    const fssam2_view one_image = s0.image(), one_mask = s0.mask_view();
    expect(fssam2_support_set_encode(seg, &one_image, &one_mask, 0, &none), FSSAM2_ERR_INVALID_ARGUMENT, "support_set_encode(count 0)");
    expect(fssam2_support_set_encode(seg, &one_image, nullptr, 1, &none), FSSAM2_ERR_INVALID_ARGUMENT, "support_set_encode(NULL masks)");
    const fssam2_view two_images[] = {s0.image(), s1.image()}, bad_masks[] = {s0.mask_view(), {empty.data(), p.w, p.h, 0}};
    expect(fssam2_support_set_encode(seg, two_images, bad_masks, 2, &none), FSSAM2_ERR_INVALID_ARGUMENT, "support_set_encode(mask[1] size mismatch)");
    expect(fssam2_support_set_encode(nullptr, &one_image, &one_mask, 1, &none), FSSAM2_ERR_INVALID_ARGUMENT, "support_set_encode(NULL segmenter)");
    expect_true(none == nullptr, "failed encode leaves *out NULL");
    expect(fssam2_support_set_load(seg, (bad + "/no_such.fssam2").c_str(), &none), FSSAM2_ERR_IO, "support_set_load(missing file)");
    std::ofstream(bad + "/garbage.fssam2") << "not a safetensors file at all";
    expect(fssam2_support_set_load(seg, (bad + "/garbage.fssam2").c_str(), &none), FSSAM2_ERR_SUPPORT_SET, "support_set_load(garbage)");
    {
        std::ifstream in(set_path, std::ios::binary);
        std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
        std::ofstream(bad + "/truncated.fssam2", std::ios::binary) << bytes.substr(0, bytes.size() - 9);
    }
    expect(fssam2_support_set_load(seg, (bad + "/truncated.fssam2").c_str(), &none), FSSAM2_ERR_SUPPORT_SET, "support_set_load(truncated)");
    expect(fssam2_support_set_load(seg, nullptr, &none), FSSAM2_ERR_INVALID_ARGUMENT, "support_set_load(NULL path)");
    expect(fssam2_support_set_save(both.get(), (bad + "/no_dir/x.fssam2").c_str()), FSSAM2_ERR_IO, "support_set_save(no such directory)");
    expect(fssam2_support_set_save(nullptr, set_path.c_str()), FSSAM2_ERR_INVALID_ARGUMENT, "support_set_save(NULL set)");
    expect(fssam2_segment_set(seg, nullptr, &image, out.data(), out.size(), nullptr, 0, nullptr), FSSAM2_ERR_INVALID_ARGUMENT, "segment_set(NULL set)");
    expect(fssam2_support_set_from_default(seg, &none), FSSAM2_ERR_STATE, "support_set_from_default(empty)");
    fssam2_support_set_free(nullptr);

    // N-way: each class equals its 1-way call; the label map follows the rule; equal sets tie to the lower index
    {
        const fssam2_support_set *sets[] = {both.get(), other_class.get(), both.get()};
        const size_t n = size_t(q.w) * q.h;
        std::vector<uint8_t> labels(n), masks(3 * n);
        std::vector<float> all(3 * n);
        fssam2_result results[3];
        const fssam2_view qi = q.image();
        expect(fssam2_segment_sets(seg, sets, 3, &qi, labels.data(), labels.size(), masks.data(), masks.size(), all.data(),
                                   all.size(), results), FSSAM2_OK, "segment_sets(3)");
        const std::vector<float> other = segment_with(seg, other_class.get(), q);
        expect_true(std::equal(serial.begin(), serial.end(), all.begin()) && std::equal(other.begin(), other.end(), all.begin() + n) &&
                        std::equal(serial.begin(), serial.end(), all.begin() + 2 * n),
                    "N-way logits == 1-way logits per class (bitwise)");
        bool rule = results[0].num_supports == 2 && results[1].num_supports == 1, seen[3] = {false, false, false};
        for (size_t i = 0; i < n; ++i) {
            const float a = all[i], b = all[n + i];
            const uint8_t want = a <= 0 && b <= 0 ? 0 : (a >= b ? 1 : 2);  // class 3 ties class 1 everywhere: never wins
            rule = rule && labels[i] == want && masks[i] == (a > 0) && masks[n + i] == (b > 0);
            seen[want] = true;
        }
        expect_true(rule, "label map: highest positive logit, ties to the lower index, else 0");
        std::printf("label map classes present: bg %d, 1 %d, 2 %d\n", seen[0], seen[1], seen[2]);
        expect(fssam2_segment_sets(seg, sets, 0, &qi, labels.data(), labels.size(), nullptr, 0, nullptr, 0, nullptr),
               FSSAM2_ERR_INVALID_ARGUMENT, "segment_sets(0 sets)");
        expect(fssam2_segment_sets(seg, sets, 3, &qi, labels.data(), labels.size(), masks.data(), n, nullptr, 0, nullptr),
               FSSAM2_ERR_INVALID_ARGUMENT, "segment_sets(masks_out too small)");
        const fssam2_support_set *with_null[] = {both.get(), nullptr};
        expect(fssam2_segment_sets(seg, with_null, 2, &qi, labels.data(), labels.size(), nullptr, 0, nullptr, 0, nullptr),
               FSSAM2_ERR_INVALID_ARGUMENT, "segment_sets(sets[1] NULL)");
    }

    // one handle, many threads, different sets and the default set at once: each result == serial (bitwise)
    {
        const std::vector<float> other = segment_with(seg, other_class.get(), q);
        const std::vector<float> q3_both = segment_with(seg, both.get(), s3), q3_other = segment_with(seg, other_class.get(), s3);
        expect(fssam2_add_support(seg, &one_image, &one_mask), FSSAM2_OK, "add_support s0");
        const fssam2_view i1 = s1.image(), m1 = s1.mask_view();
        expect(fssam2_add_support(seg, &i1, &m1), FSSAM2_OK, "add_support s1");
        const int threads = 4, rounds = 3;
        std::vector<int> wrong(threads, 0);
        std::vector<std::thread> pool;
        for (int t = 0; t < threads; ++t)
            pool.emplace_back([&, t] {
                for (int r = 0; r < rounds; ++r) {
                    const int pick = (t + r) % 3;  // default set, encoded set, another class
                    const fssam2_support_set *set = pick == 0 ? nullptr : pick == 1 ? loaded : other_class.get();
                    if (t % 2) {  // two different queries in flight
                        wrong[t] += segment_with(seg, set, q) != (pick == 2 ? other : serial);
                    } else {
                        wrong[t] += segment_with(seg, set, s3) != (pick == 2 ? q3_other : q3_both);
                    }
                }
                SetPtr mine = encode(seg, {&s0, &s1});  // encoding concurrently with queries
                wrong[t] += segment_with(seg, mine.get(), q) != serial;
            });
        for (std::thread &t : pool) t.join();
        int total = 0;
        for (int w : wrong) total += w;
        expect_true(total == 0, "one handle, 4 threads x (3 queries + 1 encode), mixed sets == serial (bitwise)");
        fssam2_support_set *from_default = nullptr;
        expect(fssam2_support_set_from_default(seg, &from_default), FSSAM2_OK, "support_set_from_default");
        expect_true(segment_with(seg, from_default, q) == serial, "the default set as a set == serial");
        fssam2_support_set_free(from_default);
        expect(fssam2_reset(seg), FSSAM2_OK, "reset");
    }

    // options: an older caller's smaller struct (whatever follows it) gets the defaults; unknown sizes are refused
    {
        struct {
            options_v1 v1;
            unsigned char after[sizeof(fssam2_options)];
        } old;
        std::memset(&old, 0xAB, sizeof(old));
        (fssam2_options_init)(reinterpret_cast<fssam2_options *>(&old.v1));  // the 0.1 entry point
        bool untouched = old.v1.struct_size == sizeof(options_v1);
        for (unsigned char b : old.after) untouched = untouched && b == 0xAB;
        expect_true(untouched, "0.1 fssam2_options_init writes the 0.1 struct only");
        old.v1.provider = "tensorrt";
        fssam2_options current;
        fssam2_options_init(&current);
        current.provider = "tensorrt";
        expect_true(current.struct_size == sizeof(fssam2_options) && current.max_shots == 8 && current.device_id == 0,
                    "fssam2_options_init: current size and defaults");
        const std::string from_old = provider_options(artifacts, reinterpret_cast<fssam2_options *>(&old.v1), "memory_attention");
        const std::string from_new = provider_options(artifacts, &current, "memory_attention");
        expect_true(from_old == from_new && from_new.find("trt_profile_max_shapes") != std::string::npos,
                    "0.1-sized options (garbage after) give the default provider options");
        std::printf("tensorrt memory_attention options:\n%s", from_new.c_str());
        fssam2_segmenter *v1seg = nullptr;
        old.v1.provider = "cpu";
        expect(fssam2_create(artifacts.c_str(), reinterpret_cast<fssam2_options *>(&old.v1), &v1seg), FSSAM2_OK, "create(0.1-sized options)");
        fssam2_destroy(v1seg);
        fssam2_options odd = current;
        odd.struct_size = sizeof(options_v1) + 4;
        expect(fssam2_create(artifacts.c_str(), &odd, &v1seg), FSSAM2_ERR_INVALID_ARGUMENT, "create(options.struct_size between versions)");
        odd.struct_size = sizeof(fssam2_options) + 8;
        expect(fssam2_create(artifacts.c_str(), &odd, &v1seg), FSSAM2_ERR_INVALID_ARGUMENT, "create(options.struct_size from the future)");
        current.max_shots = 0;
        expect(fssam2_provider_options(artifacts.c_str(), &current, "memory_attention", nullptr, 0, nullptr), FSSAM2_ERR_INVALID_ARGUMENT,
               "provider_options(max_shots 0)");
    }

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
        const fssam2::Image i0{s0.rgb.data(), s0.w, s0.h}, i1{s1.rgb.data(), s1.w, s1.h}, query{q.rgb.data(), q.w, q.h};
        const fssam2::Mask m0{s0.mask.data(), s0.w, s0.h}, m1{s1.mask.data(), s1.w, s1.h};
        const fssam2::SupportSet a = moved.encode_supports({{i0, m0}}), b = moved.encode_supports({{i1, m1}});
        const fssam2::SupportSet ab = a + b;
        expect_true(ab.shots() == 2 && moved.segment(query, ab).logits == serial, "C++ wrapper: (a + b) segments as the K=2 episode");
        ab.save(bad + "/wrapper.fssam2");
        const fssam2::SupportSet loaded_ab = fssam2::SupportSet::load(bad + "/wrapper.fssam2", moved);
        const fssam2::MultiSegmentation m = moved.segment(query, {&loaded_ab, &a});
        expect_true(m.classes.size() == 2 && m.classes[0].logits == serial && m.labels.size() == serial.size(),
                    "C++ wrapper: N-way with a loaded set");
        expect_true(moved.default_set().shots() == 1, "C++ wrapper: default_set");
        moved.segment(fssam2::Image{nullptr, p.w, p.h});
        expect_true(false, "C++ wrapper throws on a NULL query");
    } catch (const fssam2::Error &e) {
        expect_true(e.status() == FSSAM2_ERR_INVALID_ARGUMENT, std::string("C++ wrapper error status: ") + e.what());
    }

    std::printf("%s: %d checks, %d failed\n", failures ? "FAILED" : "passed", checks.load(), failures.load());
    return failures ? 1 : 0;
}
