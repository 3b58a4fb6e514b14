#include "png_io.hpp"

#include <cstdio>
#include <cstdlib>
#include <stdexcept>

#define STB_IMAGE_IMPLEMENTATION
#include <stb_image.h>
#define STB_IMAGE_WRITE_IMPLEMENTATION
#include <stb_image_write.h>

namespace fssam2_tools {

Pixels read_image(const std::string &path, int channels) {
    Pixels p;
    int file_channels = 0;
    uint8_t *data = stbi_load(path.c_str(), &p.width, &p.height, &file_channels, channels);
    if (!data) throw std::runtime_error("cannot read image " + path + ": " + stbi_failure_reason());
    p.channels = channels;
    p.data.assign(data, data + size_t(p.width) * p.height * channels);
    stbi_image_free(data);
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
