// Pre- and postprocessing, equal to runtime/image.py (numpy + Pillow) bit for bit:
//  - resize_bicubic_rgb: Pillow's Image.resize(BICUBIC) for 8-bit RGB (libImaging/Resample.c: antialiased
//    separable filter, support scaled by the downscale factor, coefficients in 22-bit fixed point,
//    two passes into 8 bits; horizontal first unless the height shrinks by more than twice as many pixels
//    as the width: Pillow >= 13's rule, Pillow <= 12 always went horizontal first).
//  - normalise: float32 (v / 255 - mean) / std, as numpy evaluates it in float32.
//  - nearest_indices / resize_mask: torch's F.interpolate(mode='nearest') in float32 index arithmetic.
//  - resize_bilinear: separable float32 bilinear (rows, then columns), torch's source-index rule.
// Built with -ffp-contract=off so no multiply-add is fused (numpy does not fuse either).
#pragma once

#include <cstdint>
#include <vector>

namespace fssam2::detail {

struct ImageView {  // interleaved 8-bit pixels
    const uint8_t *data;
    int64_t width, height, stride, channels;
    const uint8_t *row(int64_t y) const { return data + y * stride; }
};

// (H, W, 3) RGB -> (out, out, 3) RGB.
std::vector<uint8_t> resize_bicubic_rgb(const ImageView &rgb, int64_t out_w, int64_t out_h);
// RGB -> (1, 3, size, size) float32 written to `out` (3*size*size floats).
void preprocess_image(const ImageView &rgb, int64_t size, const float mean[3], const float std[3], float *out);
std::vector<int64_t> nearest_indices(int64_t in_size, int64_t out_size);
// mask (nonzero = object) -> size x size, 0/1.
std::vector<uint8_t> resize_mask(const ImageView &mask, int64_t size);
// (in_h, in_w) -> (out_h, out_w) float32.
std::vector<float> resize_bilinear(const float *x, int64_t in_h, int64_t in_w, int64_t out_h, int64_t out_w,
                                   bool align_corners);
// Decoder logits -> model size (align_corners=False) -> (out_h, out_w) (align_corners=True).
std::vector<float> postprocess_logits(const float *low, int64_t low_h, int64_t low_w, int64_t model_size,
                                      int64_t out_h, int64_t out_w);

}  // namespace fssam2::detail
