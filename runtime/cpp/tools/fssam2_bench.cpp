// fssam2_bench: per-query latency of libfssam2 over K supports.
//   fssam2_bench --artifacts DIR [--shots 1 5 ...] [--queries 20] [--warmup 2] [--support IMG MASK ...]
//                [--query IMG] [--provider cpu|cuda|tensorrt] [--threads N] [--json]
// Without --support/--query it uses a synthetic 640x480 image and mask. Supports are cycled to reach K.
// Image decoding is outside the timings; preprocessing, the graphs and postprocessing are inside.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <numeric>
#include <string>
#include <vector>

#include <fssam2/fssam2.hpp>

#include "png_io.hpp"

namespace {

using fssam2_tools::Pixels;
using Clock = std::chrono::steady_clock;

double ms_since(Clock::time_point t0) { return std::chrono::duration<double, std::milli>(Clock::now() - t0).count(); }

std::pair<Pixels, Pixels> synthetic(int w, int h) {
    Pixels image{w, h, 3, std::vector<uint8_t>(size_t(w) * h * 3)}, mask{w, h, 1, std::vector<uint8_t>(size_t(w) * h)};
    for (int y = 0; y < h; ++y)
        for (int x = 0; x < w; ++x) {
            const bool in = (x - w / 2) * (x - w / 2) + (y - h / 2) * (y - h / 2) < (h / 4) * (h / 4);
            uint8_t *p = &image.data[(size_t(y) * w + x) * 3];
            p[0] = in ? 220 : uint8_t(x * 255 / w), p[1] = in ? 60 : uint8_t(y * 255 / h), p[2] = uint8_t((x ^ y) & 0xff);
            mask.data[size_t(y) * w + x] = in;
        }
    return {image, mask};
}

int usage(const std::string &why) {
    std::fprintf(stderr,
                 "fssam2_bench: %s\nusage: fssam2_bench --artifacts DIR [--shots K ...] [--queries N] [--warmup N] "
                 "[--support IMAGE MASK ...] [--query IMAGE] [--provider P] [--threads N] [--json]\n",
                 why.c_str());
    return 2;
}

}  // namespace

int main(int argc, char **argv) {
    std::string artifacts, query_path;
    std::vector<int> shots;
    std::vector<std::pair<std::string, std::string>> support_paths;
    int queries = 20, warmup = 2;
    bool json = false;
    fssam2::Options options;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        auto value = [&](int n) { return i + n < argc; };
        if (a == "--artifacts" && value(1)) artifacts = argv[++i];
        else if (a == "--query" && value(1)) query_path = argv[++i];
        else if (a == "--queries" && value(1)) queries = std::atoi(argv[++i]);
        else if (a == "--warmup" && value(1)) warmup = std::atoi(argv[++i]);
        else if (a == "--provider" && value(1)) options.provider = argv[++i];
        else if (a == "--threads" && value(1)) options.intra_op_threads = std::atoi(argv[++i]);
        else if (a == "--json") json = true;
        else if (a == "--support" && value(2)) support_paths.emplace_back(argv[i + 1], argv[i + 2]), i += 2;
        else if (a == "--shots") {
            while (i + 1 < argc && argv[i + 1][0] != '-') shots.push_back(std::atoi(argv[++i]));
        } else return usage("unknown or incomplete argument " + a);
    }
    if (shots.empty()) shots = {1, 5};
    if (artifacts.empty()) return usage("--artifacts is required");
    if (queries < 1 || warmup < 0 || std::any_of(shots.begin(), shots.end(), [](int k) { return k < 1; }))
        return usage("--queries and every --shots value must be >= 1, --warmup >= 0");
    try {
        std::vector<std::pair<Pixels, Pixels>> supports;
        for (const auto &[image, mask] : support_paths)
            supports.emplace_back(fssam2_tools::read_image(image, 3), fssam2_tools::read_image(mask, 1));
        if (supports.empty()) supports.push_back(synthetic(640, 480));
        const Pixels query = query_path.empty() ? supports[0].first : fssam2_tools::read_image(query_path, 3);
        fssam2::Segmenter seg(artifacts, options);
        if (!json)
            std::printf("fssam2_bench: %s, %dpx model, query %dx%d, %d queries after %d warm-up (%s)\n", artifacts.c_str(),
                        seg.image_size(), query.width, query.height, queries, warmup, options.provider.c_str());
        for (int k : shots) {
            seg.reset();
            auto t0 = Clock::now();
            for (int s = 0; s < k; ++s) {
                const auto &[image, mask] = supports[s % supports.size()];
                seg.add_support(fssam2::Image{image.data.data(), image.width, image.height},
                                fssam2::Mask{mask.data.data(), mask.width, mask.height});
            }
            const double support_ms = ms_since(t0) / k;
            const fssam2::Image q{query.data.data(), query.width, query.height};
            for (int w = 0; w < warmup; ++w) seg.segment(q);
            std::vector<double> ms;
            for (int n = 0; n < queries; ++n) {
                t0 = Clock::now();
                seg.segment(q);
                ms.push_back(ms_since(t0));
            }
            std::sort(ms.begin(), ms.end());
            const double mean = std::accumulate(ms.begin(), ms.end(), 0.0) / ms.size(), median = ms[ms.size() / 2];
            if (json)
                std::printf("{\"shots\": %d, \"support_ms\": %.3f, \"query_ms_mean\": %.3f, \"query_ms_median\": %.3f, "
                            "\"query_ms_min\": %.3f, \"queries\": %d}\n",
                            k, support_ms, mean, median, ms.front(), queries);
            else
                std::printf("  K=%-3d support %8.1f ms each   query mean %8.1f ms  median %8.1f ms  min %8.1f ms\n", k,
                            support_ms, mean, median, ms.front());
        }
    } catch (const std::exception &e) {
        std::fprintf(stderr, "fssam2_bench: error: %s\n", e.what());
        return 2;
    }
    return 0;
}
