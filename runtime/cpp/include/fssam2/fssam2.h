/* libfssam2: FS-SAM2 few-shot segmentation over fssam2 artifacts (four ONNX graphs + manifest.json)
 * on ONNX Runtime. C API with a stable ABI: an opaque handle, plain C types, status codes, and
 * fssam2_last_error() for the message of the last failed call on the calling thread.
 *
 * Thread safety: handles are independent (each owns its ONNX Runtime sessions and memory bank), so
 * different handles may be used from different threads at the same time. Calls on one handle are
 * serialised by a mutex inside it (safe, but they do not run in parallel); fssam2_destroy must not
 * overlap another call on the same handle. fssam2_last_error() is per thread.
 *
 * Images are 8-bit RGB, interleaved, row-major; masks are one byte per pixel, nonzero = object.
 * A view's stride is the number of bytes between the starts of two rows (0 = tightly packed).
 */
#ifndef FSSAM2_H
#define FSSAM2_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32) && defined(FSSAM2_BUILDING)
#define FSSAM2_API __declspec(dllexport)
#elif defined(_WIN32)
#define FSSAM2_API __declspec(dllimport)
#else
#define FSSAM2_API __attribute__((visibility("default")))
#endif

typedef enum fssam2_status {
    FSSAM2_OK = 0,
    FSSAM2_ERR_INVALID_ARGUMENT = 1,      /* null pointer, bad size, mask/image size mismatch, empty mask */
    FSSAM2_ERR_MANIFEST = 2,              /* missing/malformed manifest, unknown schema, missing or corrupt graph */
    FSSAM2_ERR_PROVIDER_UNAVAILABLE = 3,  /* provider unknown or not in this ONNX Runtime build */
    FSSAM2_ERR_STATE = 4,                 /* segment before any support */
    FSSAM2_ERR_RUNTIME = 5,               /* ONNX Runtime failed (loading or running a graph) */
    FSSAM2_ERR_OUT_OF_MEMORY = 6
} fssam2_status;

typedef struct fssam2_segmenter fssam2_segmenter; /* opaque */

/* A read-only view of an image (3 bytes per pixel, RGB) or a mask (1 byte per pixel). */
typedef struct fssam2_view {
    const uint8_t *data;
    int32_t width;
    int32_t height;
    int32_t stride; /* bytes per row; 0 = width * bytes per pixel */
} fssam2_view;

typedef struct fssam2_options {
    uint32_t struct_size;      /* sizeof(fssam2_options), set by fssam2_options_init */
    const char *provider;      /* "cpu" (default), "cuda" or "tensorrt"; never a silent CPU fallback */
    int32_t intra_op_threads;  /* 0 = ONNX Runtime's default */
    int32_t verify_sha256;     /* 1 (default): check each graph file it runs against the manifest's sha256 */
} fssam2_options;

typedef struct fssam2_result {
    float score;        /* the decoder's predicted IoU of the mask */
    float object_score; /* object-presence logit (> 0: object predicted present); reported, not applied */
    int32_t num_supports;
} fssam2_result;

FSSAM2_API const char *fssam2_version(void);
/* Message of the last failed call on this thread ("" if none); valid until the next call on this thread. */
FSSAM2_API const char *fssam2_last_error(void);
FSSAM2_API void fssam2_options_init(fssam2_options *options);

/* Load artifacts_dir/manifest.json (schema 1 or 2) and the four graphs. options may be NULL (defaults). */
FSSAM2_API fssam2_status fssam2_create(const char *artifacts_dir, const fssam2_options *options,
                                       fssam2_segmenter **out);
FSSAM2_API void fssam2_destroy(fssam2_segmenter *segmenter); /* NULL is fine */

/* Encode one annotated support into the memory bank (once; reused by every query). The mask must
 * have the image's size and show the object. */
FSSAM2_API fssam2_status fssam2_add_support(fssam2_segmenter *segmenter, const fssam2_view *image,
                                            const fssam2_view *mask);
/* Segment a query from all supports added so far. mask_out: query width*height bytes, 1 = object,
 * 0 = background (mask_out_size in bytes). logits_out (optional, NULL to skip): width*height float32
 * mask logits in the query's size (mask = logits > 0). result (optional): scores. */
FSSAM2_API fssam2_status fssam2_segment(fssam2_segmenter *segmenter, const fssam2_view *query,
                                        uint8_t *mask_out, size_t mask_out_size, float *logits_out,
                                        size_t logits_out_count, fssam2_result *result);
/* Forget all supports (the graphs stay loaded). */
FSSAM2_API fssam2_status fssam2_reset(fssam2_segmenter *segmenter);
FSSAM2_API fssam2_status fssam2_num_supports(const fssam2_segmenter *segmenter, int32_t *out);
/* The square model input side from the manifest. */
FSSAM2_API fssam2_status fssam2_image_size(const fssam2_segmenter *segmenter, int32_t *out);

/* The model input for an image: (1, 3, S, S) float32, Pillow-bicubic resized and normalised as the
 * Python runtime does (out_count >= 3*S*S). For apps that inspect inputs, and for parity tests. */
FSSAM2_API fssam2_status fssam2_preprocess(const fssam2_segmenter *segmenter, const fssam2_view *image,
                                           float *out, size_t out_count);
/* A mask resized to size x size with torch's 'nearest' rule, as supports are (out: size*size bytes, 0/1). */
FSSAM2_API fssam2_status fssam2_resize_mask(const fssam2_view *mask, int32_t size, uint8_t *out,
                                            size_t out_size);
/* Decoder logits (low_h x low_w) to out_h x out_w: bilinear to model_size (align_corners=False), then
 * to the output size (align_corners=True), as the Python runtime does (out: out_h*out_w floats). */
FSSAM2_API fssam2_status fssam2_postprocess_logits(const float *low_res, int32_t low_h, int32_t low_w,
                                                   int32_t model_size, int32_t out_h, int32_t out_w,
                                                   float *out, size_t out_count);

#ifdef __cplusplus
}
#endif
#endif /* FSSAM2_H */
