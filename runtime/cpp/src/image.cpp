#include "image.hpp"

#include <algorithm>
#include <cmath>

namespace fssam2::detail {
namespace {

// ---- Pillow's Resample.c, 8 bits per channel, BICUBIC (a = -0.5, support 2) ----
constexpr int PRECISION_BITS = 32 - 8 - 2;

double bicubic_filter(double x) {
    constexpr double a = -0.5;
    if (x < 0.0) x = -x;
    if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
    if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
    return 0.0;
}

inline uint8_t clip8(int in) {
    int v = in >> PRECISION_BITS;  // arithmetic shift, as Pillow's lookup index
    return static_cast<uint8_t>(v < 0 ? 0 : v > 255 ? 255 : v);
}

struct Coeffs {
    int ksize = 0;
    std::vector<int> bounds;  // (xmin, count) per output pixel
    std::vector<int32_t> kk;  // ksize fixed-point weights per output pixel
};

// precompute_coeffs + normalize_coeffs_8bpc for the box (0, in_size).
Coeffs precompute_coeffs(int in_size, int out_size) {
    const float in0 = 0.0f, in1 = static_cast<float>(in_size);
    double scale = static_cast<double>(in1 - in0) / out_size, filterscale = scale;
    if (filterscale < 1.0) filterscale = 1.0;
    const double support = 2.0 * filterscale;
    Coeffs c;
    c.ksize = static_cast<int>(std::ceil(support)) * 2 + 1;
    c.bounds.resize(2 * static_cast<size_t>(out_size));
    c.kk.assign(static_cast<size_t>(out_size) * c.ksize, 0);
    std::vector<double> k(c.ksize);
    for (int xx = 0; xx < out_size; ++xx) {
        double center = in0 + (xx + 0.5) * scale, ww = 0.0, ss = 1.0 / filterscale;
        int xmin = static_cast<int>(center - support + 0.5);
        if (xmin < 0) xmin = 0;
        int xmax = static_cast<int>(center + support + 0.5);
        if (xmax > in_size) xmax = in_size;
        xmax -= xmin;
        for (int x = 0; x < xmax; ++x) {
            double w = bicubic_filter((x + xmin - center + 0.5) * ss);
            k[x] = w;
            ww += w;
        }
        for (int x = 0; x < xmax; ++x)
            if (ww != 0.0) k[x] /= ww;
        for (int x = 0; x < xmax; ++x)  // normalize_coeffs_8bpc
            c.kk[static_cast<size_t>(xx) * c.ksize + x] =
                static_cast<int32_t>(k[x] < 0 ? -0.5 + k[x] * (1 << PRECISION_BITS) : 0.5 + k[x] * (1 << PRECISION_BITS));
        c.bounds[2 * xx] = xmin;
        c.bounds[2 * xx + 1] = xmax;
    }
    return c;
}

}  // namespace

namespace {

// One horizontal pass: rows [row0, row0 + rows) of `in` (width in_w) -> rows x out_w.
std::vector<uint8_t> horizontal_pass(const uint8_t *in, int64_t in_stride, int row0, int rows, const Coeffs &c,
                                     int out_w) {
    std::vector<uint8_t> out(static_cast<size_t>(rows) * out_w * 3);
    for (int yy = 0; yy < rows; ++yy) {
        const uint8_t *in_row = in + (yy + row0) * in_stride;
        uint8_t *out_row = out.data() + static_cast<size_t>(yy) * out_w * 3;
        for (int xx = 0; xx < out_w; ++xx) {
            const int xmin = c.bounds[2 * xx], xmax = c.bounds[2 * xx + 1];
            const int32_t *k = &c.kk[static_cast<size_t>(xx) * c.ksize];
            int ss0 = 1 << (PRECISION_BITS - 1), ss1 = ss0, ss2 = ss0;
            for (int x = 0; x < xmax; ++x) {
                const uint8_t *p = in_row + 3 * (x + xmin);
                ss0 += p[0] * k[x];
                ss1 += p[1] * k[x];
                ss2 += p[2] * k[x];
            }
            out_row[3 * xx] = clip8(ss0), out_row[3 * xx + 1] = clip8(ss1), out_row[3 * xx + 2] = clip8(ss2);
        }
    }
    return out;
}

// One vertical pass: `in` (width w, rows addressed by the coefficients' bounds) -> out_h x w.
std::vector<uint8_t> vertical_pass(const uint8_t *in, int64_t in_stride, int w, const Coeffs &c, int out_h) {
    std::vector<uint8_t> out(static_cast<size_t>(out_h) * w * 3);
    for (int yy = 0; yy < out_h; ++yy) {
        const int ymin = c.bounds[2 * yy], ymax = c.bounds[2 * yy + 1];
        const int32_t *k = &c.kk[static_cast<size_t>(yy) * c.ksize];
        uint8_t *out_row = out.data() + static_cast<size_t>(yy) * w * 3;
        for (int xx = 0; xx < w; ++xx) {
            int ss0 = 1 << (PRECISION_BITS - 1), ss1 = ss0, ss2 = ss0;
            for (int y = 0; y < ymax; ++y) {
                const uint8_t *p = in + (y + ymin) * in_stride + 3 * xx;
                ss0 += p[0] * k[y];
                ss1 += p[1] * k[y];
                ss2 += p[2] * k[y];
            }
            out_row[3 * xx] = clip8(ss0), out_row[3 * xx + 1] = clip8(ss1), out_row[3 * xx + 2] = clip8(ss2);
        }
    }
    return out;
}

}  // namespace

std::vector<uint8_t> resize_bicubic_rgb(const ImageView &rgb, int64_t out_w64, int64_t out_h64) {
    const int in_w = static_cast<int>(rgb.width), in_h = static_cast<int>(rgb.height);
    const int out_w = static_cast<int>(out_w64), out_h = static_cast<int>(out_h64);
    if (in_w == out_w && in_h == out_h) {  // Image.resize returns a copy
        std::vector<uint8_t> out(static_cast<size_t>(out_w) * out_h * 3);
        for (int y = 0; y < in_h; ++y) std::copy(rgb.row(y), rgb.row(y) + 3 * in_w, out.begin() + size_t(y) * out_w * 3);
        return out;
    }
    const bool need_horizontal = out_w != in_w, need_vertical = out_h != in_h;
    // Pillow >= 13 runs the vertical pass first when the height shrinks by more than twice as many
    // pixels as the width (Pillow <= 12 always went horizontal first; see docs/cpp.md).
    const bool horizontal_first = !((in_h - out_h) > 0 && (in_h - out_h) > (in_w - out_w) * 2);
    if (horizontal_first) {
        Coeffs vert = precompute_coeffs(in_h, out_h);
        if (!need_horizontal) return vertical_pass(rgb.data, rgb.stride, in_w, vert, out_h);
        // The horizontal pass covers only the rows the vertical pass reads.
        const int ybox_first = vert.bounds[0];
        const int ybox_last = vert.bounds[2 * out_h - 2] + vert.bounds[2 * out_h - 1];
        for (int i = 0; i < out_h; ++i) vert.bounds[2 * i] -= ybox_first;
        std::vector<uint8_t> temp =
            horizontal_pass(rgb.data, rgb.stride, ybox_first, ybox_last - ybox_first, precompute_coeffs(in_w, out_w), out_w);
        if (!need_vertical) return temp;
        return vertical_pass(temp.data(), int64_t{out_w} * 3, out_w, vert, out_h);
    }
    std::vector<uint8_t> temp = vertical_pass(rgb.data, rgb.stride, in_w, precompute_coeffs(in_h, out_h), out_h);
    if (!need_horizontal) return temp;
    return horizontal_pass(temp.data(), int64_t{in_w} * 3, 0, out_h, precompute_coeffs(in_w, out_w), out_w);
}

void preprocess_image(const ImageView &rgb, int64_t size, const float mean[3], const float std[3], float *out) {
    const std::vector<uint8_t> resized = resize_bicubic_rgb(rgb, size, size);
    const size_t plane = static_cast<size_t>(size) * size;
    for (size_t i = 0; i < plane; ++i)
        for (int c = 0; c < 3; ++c) {
            const float x = static_cast<float>(resized[3 * i + c]) / 255.0f;
            out[c * plane + i] = (x - mean[c]) / std[c];
        }
}

std::vector<int64_t> nearest_indices(int64_t in_size, int64_t out_size) {
    const float scale = static_cast<float>(static_cast<double>(in_size) / static_cast<double>(out_size));
    std::vector<int64_t> idx(out_size);
    for (int64_t i = 0; i < out_size; ++i)
        idx[i] = std::min(static_cast<int64_t>(std::floor(static_cast<float>(i) * scale)), in_size - 1);
    return idx;
}

std::vector<uint8_t> resize_mask(const ImageView &mask, int64_t size) {
    const std::vector<int64_t> rows = nearest_indices(mask.height, size), cols = nearest_indices(mask.width, size);
    std::vector<uint8_t> out(static_cast<size_t>(size) * size);
    for (int64_t y = 0; y < size; ++y) {
        const uint8_t *row = mask.row(rows[y]);
        for (int64_t x = 0; x < size; ++x) out[y * size + x] = row[cols[x]] != 0;
    }
    return out;
}

namespace {

struct AxisTaps {
    std::vector<int64_t> i0, i1;
    std::vector<float> lam;
};

AxisTaps bilinear_taps(int64_t in_size, int64_t out_size, bool align_corners) {
    AxisTaps t{std::vector<int64_t>(out_size), std::vector<int64_t>(out_size), std::vector<float>(out_size)};
    float scale;
    if (align_corners)
        scale = out_size > 1 ? static_cast<float>(static_cast<double>(in_size - 1) / static_cast<double>(out_size - 1))
                             : 0.0f;
    else
        scale = static_cast<float>(static_cast<double>(in_size) / static_cast<double>(out_size));
    for (int64_t i = 0; i < out_size; ++i) {
        const float dst = static_cast<float>(i);
        const float src = align_corners ? dst * scale : std::max((dst + 0.5f) * scale - 0.5f, 0.0f);
        t.i0[i] = std::min(static_cast<int64_t>(std::floor(src)), in_size - 1);
        t.i1[i] = std::min(t.i0[i] + 1, in_size - 1);
        t.lam[i] = static_cast<float>(static_cast<double>(src) - static_cast<double>(t.i0[i]));
    }
    return t;
}

}  // namespace

std::vector<float> resize_bilinear(const float *x, int64_t in_h, int64_t in_w, int64_t out_h, int64_t out_w,
                                   bool align_corners) {
    const AxisTaps ty = bilinear_taps(in_h, out_h, align_corners), tx = bilinear_taps(in_w, out_w, align_corners);
    std::vector<float> rows(static_cast<size_t>(out_h) * in_w), out(static_cast<size_t>(out_h) * out_w);
    for (int64_t y = 0; y < out_h; ++y) {  // axis 0 first, as runtime/image.py
        const float *a = x + ty.i0[y] * in_w, *b = x + ty.i1[y] * in_w;
        const float lam = ty.lam[y], one_minus = 1.0f - lam;
        float *r = rows.data() + y * in_w;
        for (int64_t i = 0; i < in_w; ++i) r[i] = a[i] * one_minus + b[i] * lam;
    }
    for (int64_t y = 0; y < out_h; ++y) {
        const float *r = rows.data() + y * in_w;
        float *o = out.data() + y * out_w;
        for (int64_t i = 0; i < out_w; ++i) {
            const float lam = tx.lam[i];
            o[i] = r[tx.i0[i]] * (1.0f - lam) + r[tx.i1[i]] * lam;
        }
    }
    return out;
}

std::vector<float> postprocess_logits(const float *low, int64_t low_h, int64_t low_w, int64_t model_size,
                                      int64_t out_h, int64_t out_w) {
    const std::vector<float> full = resize_bilinear(low, low_h, low_w, model_size, model_size, false);
    return resize_bilinear(full.data(), model_size, model_size, out_h, out_w, true);
}

}  // namespace fssam2::detail
