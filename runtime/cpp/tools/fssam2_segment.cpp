// fssam2_segment: K-shot segmentation of one query with libfssam2 (the C++ twin of `fssam2 segment`).
//   fssam2_segment --artifacts DIR (--support IMG MASK ... [--save-set SET] | --support-set SET | --class NAME=SET ...)
//                  --query Q --out mask.png [--provider cpu|cuda|tensorrt] [--threads N]
// --class (N-way): --out is a label map, grey level i = the i-th --class, 0 = background.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include <fssam2/fssam2.hpp>

#include "png_io.hpp"

namespace {

int usage(const char *why) {
    std::fprintf(stderr,
                 "fssam2_segment: %s\nusage: fssam2_segment --artifacts DIR (--support IMAGE MASK [--support IMAGE MASK ...] "
                 "[--save-set SET] | --support-set SET | --class NAME=SET [--class NAME=SET ...]) --query IMAGE --out PNG "
                 "[--provider cpu|cuda|tensorrt] [--threads N]\n",
                 why);
    return 2;
}

}  // namespace

int main(int argc, char **argv) {
    std::string artifacts, query, out, set_in, set_out;
    fssam2::Options options;
    std::vector<std::pair<std::string, std::string>> supports, classes;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        auto value = [&](int n) { return i + n < argc; };
        if (a == "--artifacts" && value(1)) artifacts = argv[++i];
        else if (a == "--query" && value(1)) query = argv[++i];
        else if (a == "--out" && value(1)) out = argv[++i];
        else if (a == "--provider" && value(1)) options.provider = argv[++i];
        else if (a == "--threads" && value(1)) options.intra_op_threads = std::atoi(argv[++i]);
        else if (a == "--support" && value(2)) supports.emplace_back(argv[i + 1], argv[i + 2]), i += 2;
        else if (a == "--support-set" && value(1)) set_in = argv[++i];
        else if (a == "--save-set" && value(1)) set_out = argv[++i];
        else if (a == "--class" && value(1) && std::strchr(argv[i + 1], '=')) {
            const std::string c = argv[++i];
            classes.emplace_back(c.substr(0, c.find('=')), c.substr(c.find('=') + 1));
        } else return usage(("unknown or incomplete argument " + a).c_str());
    }
    const int sources = !supports.empty() + !set_in.empty() + !classes.empty();
    if (artifacts.empty() || query.empty() || out.empty() || sources != 1)
        return usage("--artifacts, --query, --out and one of --support, --support-set, --class are required");
    if (!set_out.empty() && supports.empty()) return usage("--save-set writes the set of the --support arguments");
    if (classes.size() > 255) return usage("at most 255 --class");
    try {
        fssam2::Segmenter seg(artifacts, options);
        std::vector<fssam2::SupportSet> sets;
        if (!supports.empty()) {
            std::vector<fssam2_tools::Pixels> pictures;  // alive until encoded
            std::vector<std::pair<fssam2::Image, fssam2::Mask>> views;
            for (const auto &[image_path, mask_path] : supports) {
                pictures.push_back(fssam2_tools::read_image(image_path, 3));
                pictures.push_back(fssam2_tools::read_image(mask_path, 1));
            }
            for (size_t i = 0; i < pictures.size(); i += 2)
                views.push_back({fssam2::Image{pictures[i].data.data(), pictures[i].width, pictures[i].height},
                                 fssam2::Mask{pictures[i + 1].data.data(), pictures[i + 1].width, pictures[i + 1].height}});
            sets.push_back(seg.encode_supports(views));
            if (!set_out.empty()) sets.back().save(set_out);
        } else if (!set_in.empty()) {
            sets.push_back(fssam2::SupportSet::load(set_in, seg));
        } else {
            for (const auto &c : classes) sets.push_back(fssam2::SupportSet::load(c.second, seg));
        }
        const auto q = fssam2_tools::read_image(query, 3);
        const fssam2::Image image{q.data.data(), q.width, q.height};
        if (classes.empty()) {
            fssam2::Segmentation r = seg.segment(image, sets.front(), false);
            long foreground = 0;
            for (uint8_t &v : r.mask) foreground += v, v = v ? 255 : 0;
            fssam2_tools::write_grey_png(out, r.width, r.height, r.mask.data());
            std::printf("%s: %ld px of %zu foreground; predicted IoU %.3f, object score %+.2f (%d-shot @ %dpx, %s)\n",
                        out.c_str(), foreground, r.mask.size(), r.score, r.object_score, sets.front().shots(),
                        seg.image_size(), options.provider.c_str());
        } else {
            std::vector<const fssam2::SupportSet *> pointers;
            for (const auto &s : sets) pointers.push_back(&s);
            const fssam2::MultiSegmentation m = seg.segment(image, pointers, false);
            fssam2_tools::write_grey_png(out, m.width, m.height, m.labels.data());
            std::vector<long> counts(classes.size() + 1, 0);
            for (uint8_t v : m.labels) ++counts[v];
            std::printf("%s: label map (0 = background %ld px", out.c_str(), counts[0]);
            for (size_t c = 0; c < classes.size(); ++c)
                std::printf(", %zu = %s %ld px", c + 1, classes[c].first.c_str(), counts[c + 1]);
            std::printf(")\n");
        }
    } catch (const std::exception &e) {
        std::fprintf(stderr, "fssam2_segment: error: %s\n", e.what());
        return 2;
    }
    return 0;
}
