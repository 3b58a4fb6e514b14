#include "png_io.hpp"

#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <stdexcept>

#define STB_IMAGE_IMPLEMENTATION
#include <stb_image.h>
#define STB_IMAGE_WRITE_IMPLEMENTATION
#include <stb_image_write.h>

namespace fssam2_tools {
namespace {

// The Orientation tag (0x0112) of a TIFF structure's first IFD (what EXIF holds), 1 if absent or unreadable.
int tiff_orientation(const uint8_t *t, size_t n) {
    if (n < 8 || !((t[0] == 'I' && t[1] == 'I') || (t[0] == 'M' && t[1] == 'M'))) return 1;
    const bool big = t[0] == 'M';
    const auto u16 = [&](size_t at) { return big ? unsigned(t[at]) << 8 | t[at + 1] : unsigned(t[at + 1]) << 8 | t[at]; };
    const auto u32 = [&](size_t at) { return big ? u16(at) << 16 | u16(at + 2) : u16(at + 2) << 16 | u16(at); };
    if (u16(2) != 42) return 1;
    const size_t ifd = u32(4);
    if (ifd > n - 2) return 1;
    for (size_t i = 0, count = u16(ifd); i < count; ++i) {
        const size_t entry = ifd + 2 + 12 * i;
        if (entry > n - 12) return 1;
        if (u16(entry) != 0x0112) continue;
        const unsigned type = u16(entry + 2), value = type == 3 ? u16(entry + 8) : type == 4 ? u32(entry + 8) : 0;
        return value >= 1 && value <= 8 ? int(value) : 1;
    }
    return 1;
}

uint32_t be32(const uint8_t *p) { return uint32_t(p[0]) << 24 | uint32_t(p[1]) << 16 | uint32_t(p[2]) << 8 | p[3]; }

// EXIF orientation 1-8 of a JPEG (APP1 "Exif" segment, before the scan) or a PNG (eXIf chunk); 1 if none.
int exif_orientation(const std::vector<uint8_t> &file) {
    const uint8_t *d = file.data();
    const size_t n = file.size();
    if (n >= 4 && d[0] == 0xFF && d[1] == 0xD8) {
        for (size_t i = 2; i + 4 <= n;) {
            if (d[i] != 0xFF) return 1;
            const uint8_t marker = d[i + 1];
            if (marker == 0xFF) ++i;  // fill byte
            else if (marker == 0x01 || (marker >= 0xD0 && marker <= 0xD7)) i += 2;  // no length
            else if (marker == 0xDA || marker == 0xD9) return 1;  // the scan (or the end): no EXIF after it
            else {
                const size_t len = size_t(d[i + 2]) << 8 | d[i + 3];
                if (len < 2 || len > n - i - 2) return 1;
                if (marker == 0xE1 && len >= 16 && std::memcmp(d + i + 4, "Exif\0\0", 6) == 0)
                    return tiff_orientation(d + i + 10, len - 8);
                i += 2 + len;
            }
        }
        return 1;
    }
    static const uint8_t png_signature[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};
    if (n < 8 || std::memcmp(d, png_signature, 8) != 0) return 1;
    for (size_t at = 8; at + 12 <= n;) {
        const size_t len = be32(d + at);
        if (len > n - at - 12) return 1;
        if (std::memcmp(d + at + 4, "eXIf", 4) == 0) return tiff_orientation(d + at + 8, len);
        if (std::memcmp(d + at + 4, "IEND", 4) == 0) return 1;
        at += 12 + len;
    }
    return 1;
}

// Turn decoded pixels the way EXIF orientation `o` says they are shown (as Pillow's ImageOps.exif_transpose).
void make_upright(Pixels &p, int o) {
    if (o < 2 || o > 8) return;
    const size_t w = p.width, h = p.height, c = p.channels;
    const size_t w2 = o >= 5 ? h : w, h2 = o >= 5 ? w : h;
    std::vector<uint8_t> out(p.data.size());
    for (size_t y = 0; y < h2; ++y)
        for (size_t x = 0; x < w2; ++x) {
            size_t sx = x, sy = y;  // the stored pixel shown at (x, y)
            switch (o) {
                case 2: sx = w - 1 - x; break;
                case 3: sx = w - 1 - x, sy = h - 1 - y; break;
                case 4: sy = h - 1 - y; break;
                case 5: sx = y, sy = x; break;
                case 6: sx = y, sy = h - 1 - x; break;
                case 7: sx = w - 1 - y, sy = h - 1 - x; break;
                default: sx = w - 1 - y, sy = x; break;  // 8
            }
            std::memcpy(&out[(y * w2 + x) * c], &p.data[(sy * w + sx) * c], c);
        }
    p.data.swap(out);
    p.width = int(w2), p.height = int(h2);
}

}  // namespace

Pixels read_image(const std::string &path, int channels) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw std::runtime_error("cannot read image " + path + ": " + std::strerror(errno));
    const std::vector<uint8_t> file((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (file.size() > size_t(INT_MAX)) throw std::runtime_error("cannot read image " + path + ": file too large");
    Pixels p;
    int file_channels = 0;
    uint8_t *data = stbi_load_from_memory(file.data(), int(file.size()), &p.width, &p.height, &file_channels, channels);
    if (!data) throw std::runtime_error("cannot read image " + path + ": " + stbi_failure_reason());
    p.channels = channels;
    p.data.assign(data, data + size_t(p.width) * p.height * channels);
    stbi_image_free(data);
    make_upright(p, exif_orientation(file));
    return p;
}

void write_grey_png(const std::string &path, int width, int height, const uint8_t *data) {
    const std::string tmp = path + ".tmp.png";
    if (!stbi_write_png(tmp.c_str(), width, height, 1, data, width)) {
        std::remove(tmp.c_str());
        throw std::runtime_error("cannot write " + tmp);
    }
    if (std::rename(tmp.c_str(), path.c_str()) != 0) {
        std::remove(tmp.c_str());
        throw std::runtime_error("cannot rename " + tmp + " to " + path);
    }
}

}  // namespace fssam2_tools
