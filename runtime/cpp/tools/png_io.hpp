// PNG/JPEG reading and PNG writing for the demo tools (stb_image / stb_image_write); not in the library.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace fssam2_tools {

struct Pixels {
    int width = 0, height = 0, channels = 0;
    std::vector<uint8_t> data;
};

// channels = 3 (RGB) or 1 (grey, for masks: nonzero = object), turned upright by the file's EXIF orientation (a
// JPEG's APP1 Exif segment or a PNG's eXIf chunk), as the Python runtime reads files. Throws std::runtime_error naming the file.
Pixels read_image(const std::string &path, int channels);
// Writes an 8-bit grey PNG to a temp file beside `path`, then renames it. Throws std::runtime_error.
void write_grey_png(const std::string &path, int width, int height, const uint8_t *data);

}  // namespace fssam2_tools
