#include <fssam2/fssam2.hpp>

#include <cstdio>
#include <vector>

int main(int argc, char **argv) {
    if (argc < 2) return std::fprintf(stderr, "usage: fssam2_example ARTIFACTS_DIR\n"), 2;
    const int w = 320, h = 240;  // your decoded RGB8 image (stride 0 = packed) and its mask go here
    std::vector<uint8_t> rgb(w * h * 3), mask(w * h);
    for (int i = 0; i < w * h; ++i) {
        const bool in = i % w > 100 && i % w < 200 && i / w > 60 && i / w < 160;
        rgb[3 * i] = in ? 230 : 20, rgb[3 * i + 1] = in ? 200 : 40, rgb[3 * i + 2] = uint8_t(i / w);
        mask[i] = in;
    }
    try {
        fssam2::Segmenter seg(argv[1], fssam2::Options{"cpu"});  // "cuda" / "tensorrt": error if absent
        fssam2::SupportSet set = seg.encode_supports({{{rgb.data(), w, h}, {mask.data(), w, h}}});  // K pairs, encoded once
        // set.save("square.fssam2") / fssam2::SupportSet::load("square.fssam2", seg): reuse it anywhere
        fssam2::Segmentation r = seg.segment({rgb.data(), w, h}, set);  // r.mask: w*h bytes, 1 = object
        long fg = 0;
        for (uint8_t v : r.mask) fg += v;
        std::printf("%ld of %d px foreground, predicted IoU %.3f\n", fg, w * h, r.score);
    } catch (const fssam2::Error &e) {  // e.status(): FSSAM2_ERR_MANIFEST, _PROVIDER_UNAVAILABLE, ...
        std::fprintf(stderr, "fssam2: %s\n", e.what());
        return 1;
    }
}
