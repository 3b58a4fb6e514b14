// fssam2_segment: K-shot segmentation of one query with libfssam2 (the C++ twin of `fssam2 segment`).
//   fssam2_segment --artifacts DIR --support IMG MASK [--support IMG MASK ...] --query Q --out mask.png
//                  [--provider cpu|cuda|tensorrt] [--threads N]
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include <fssam2/fssam2.hpp>

#include "png_io.hpp"

namespace {

int usage(const char *why) {
    std::fprintf(stderr,
                 "fssam2_segment: %s\nusage: fssam2_segment --artifacts DIR --support IMAGE MASK [--support IMAGE MASK ...] "
                 "--query IMAGE --out MASK.png [--provider cpu|cuda|tensorrt] [--threads N]\n",
                 why);
    return 2;
}

}  // namespace

int main(int argc, char **argv) {
    std::string artifacts, query, out;
    fssam2::Options options;
    std::vector<std::pair<std::string, std::string>> supports;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        auto value = [&](int n) { return i + n < argc; };
        if (a == "--artifacts" && value(1)) artifacts = argv[++i];
        else if (a == "--query" && value(1)) query = argv[++i];
        else if (a == "--out" && value(1)) out = argv[++i];
        else if (a == "--provider" && value(1)) options.provider = argv[++i];
        else if (a == "--threads" && value(1)) options.intra_op_threads = std::atoi(argv[++i]);
        else if (a == "--support" && value(2)) supports.emplace_back(argv[i + 1], argv[i + 2]), i += 2;
        else return usage(("unknown or incomplete argument " + a).c_str());
    }
    if (artifacts.empty() || query.empty() || out.empty() || supports.empty())
        return usage("--artifacts, at least one --support, --query and --out are required");
    try {
        fssam2::Segmenter seg(artifacts, options);
        for (const auto &[image_path, mask_path] : supports) {
            const auto image = fssam2_tools::read_image(image_path, 3), mask = fssam2_tools::read_image(mask_path, 1);
            seg.add_support(fssam2::Image{image.data.data(), image.width, image.height},
                            fssam2::Mask{mask.data.data(), mask.width, mask.height});
        }
        const auto q = fssam2_tools::read_image(query, 3);
        fssam2::Segmentation r = seg.segment(fssam2::Image{q.data.data(), q.width, q.height}, false);
        long foreground = 0;
        for (uint8_t &v : r.mask) foreground += v, v = v ? 255 : 0;
        fssam2_tools::write_grey_png(out, r.width, r.height, r.mask.data());
        std::printf("%s: %ld px of %zu foreground; predicted IoU %.3f, object score %+.2f (%zu-shot @ %dpx, %s)\n",
                    out.c_str(), foreground, r.mask.size(), r.score, r.object_score, supports.size(), seg.image_size(),
                    options.provider.c_str());
    } catch (const std::exception &e) {
        std::fprintf(stderr, "fssam2_segment: error: %s\n", e.what());
        return 2;
    }
    return 0;
}
