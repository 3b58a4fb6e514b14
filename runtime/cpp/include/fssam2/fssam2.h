/* libfssam2: FS-SAM2 few-shot segmentation over fssam2 artifacts (four ONNX graphs + manifest.json)
 * on ONNX Runtime. C API with a stable ABI: opaque handles, plain C types, status codes, and
 * fssam2_last_error() for the message of the calling thread's last failed call.
 *
 * Support sets: fssam2_support_set_encode turns K annotated supports into an immutable support set (the
 * memory tokens, bound to the model that made them); save / load write and read it as a file in the
 * format of docs/support-sets.md, the same files the Python runtime reads and writes. fssam2_segment_set
 * segments a query with one set; fssam2_segment_sets with N sets (one image encoding for all, per-class
 * masks and a label map). fssam2_add_support / fssam2_segment / fssam2_reset work on a default set held
 * by the segmenter.
 *
 * Ownership: every pointer passed in (views, paths, options, set arrays, output buffers) is borrowed
 * for the duration of the call only; the library keeps no pointer to caller memory after a call
 * returns. Handles (fssam2_segmenter, fssam2_support_set) are owned by the caller, who frees each once
 * with fssam2_destroy / fssam2_support_set_free. A support set does not refer to the segmenter that
 * made or loaded it: it may outlive it, and be used with any segmenter over artifacts of the same model.
 *
 * Thread safety: a segmenter may be called from many threads at once. fssam2_segment_set(s),
 * fssam2_support_set_encode/load and fssam2_segment run in parallel on the same handle (ONNX Runtime
 * sessions are run concurrently), with the same or different sets, and give results bit-identical to
 * serial calls (tested on the cpu provider; ONNX Runtime documents concurrent Run for every provider). fssam2_add_support and fssam2_reset swap the default set atomically: a concurrent
 * fssam2_segment uses the set as it was when it started. Support sets are immutable and may be shared
 * between threads and segmenters. Freeing a handle (fssam2_destroy, fssam2_support_set_free) must not
 * overlap another call that uses it.
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
    FSSAM2_ERR_OUT_OF_MEMORY = 6,
    FSSAM2_ERR_IO = 7,                    /* a support-set file could not be read or written */
    FSSAM2_ERR_SUPPORT_SET = 8            /* not a support-set file, malformed, or made for other artifacts */
} fssam2_status;

typedef struct fssam2_segmenter fssam2_segmenter;     /* opaque */
typedef struct fssam2_support_set fssam2_support_set; /* opaque, immutable */

/* A read-only view of an image (3 bytes per pixel, RGB) or a mask (1 byte per pixel). */
typedef struct fssam2_view {
    const uint8_t *data;
    int32_t width;
    int32_t height;
    int32_t stride; /* bytes per row; 0 = width * bytes per pixel */
} fssam2_view;

/* Options, versioned by struct_size: fields are only ever appended, and fssam2_create takes the size
 * a caller was compiled with (any earlier version of this struct) and gives the fields that caller does
 * not know their defaults. Fill it with fssam2_options_init, then set what differs. */
typedef struct fssam2_options {
    uint32_t struct_size;      /* set by fssam2_options_init */
    const char *provider;      /* "cpu" (default), "cuda" or "tensorrt"; never a silent CPU fallback */
    int32_t intra_op_threads;  /* 0 = ONNX Runtime's default */
    int32_t verify_sha256;     /* 1 (default): check each graph file it runs against the manifest's sha256 */
    /* since 0.2: GPU providers (as the Python runtime's); written, not yet run on a GPU */
    int32_t device_id;           /* CUDA device ordinal for "cuda" / "tensorrt" (default 0) */
    int32_t max_shots;           /* "tensorrt": the TensorRT EP profile covers K = 1..max_shots supports (default 8),
                                    tuned for min(5, max_shots); more supports in a set are refused */
    const char *trt_cache_dir;   /* "tensorrt": engine + timing caches, reused across runs (NULL = <artifacts>/ort_trt_cache) */
    int64_t trt_workspace_bytes; /* "tensorrt": builder workspace (0 = default 4 GiB) */
} fssam2_options;

typedef struct fssam2_result {
    float score;        /* the decoder's predicted IoU of the mask */
    float object_score; /* object-presence logit (> 0: object predicted present); reported, not applied */
    int32_t num_supports;
} fssam2_result;

FSSAM2_API const char *fssam2_version(void);
/* The message of the most recent call on this thread that returns a status: "" after one that succeeded,
 * else why it failed. Calls that return no status (fssam2_version, fssam2_options_init, fssam2_destroy,
 * fssam2_support_set_free, fssam2_last_error) leave it as it is. Per thread; the pointer stays valid
 * until the next status-returning call on this thread. */
FSSAM2_API const char *fssam2_last_error(void);
/* Defaults into the first struct_size bytes of *options (struct_size: the caller's sizeof(fssam2_options),
 * which the macro below passes), and options->struct_size = struct_size. */
FSSAM2_API void fssam2_options_init_sized(fssam2_options *options, uint32_t struct_size);
/* Defaults for the 0.1 fields only (the entry point of binaries built against 0.1, which lacked
 * fssam2_options_init_sized); callers built with this header get the macro. */
FSSAM2_API void fssam2_options_init(fssam2_options *options);
#define fssam2_options_init(options) fssam2_options_init_sized((options), (uint32_t)sizeof *(options))

/* Load artifacts_dir/manifest.json (schema 1, 2 or 3) and the four graphs. options may be NULL (defaults). */
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
/* Forget all supports of the default set (the graphs stay loaded). */
FSSAM2_API fssam2_status fssam2_reset(fssam2_segmenter *segmenter);
FSSAM2_API fssam2_status fssam2_num_supports(const fssam2_segmenter *segmenter, int32_t *out);
/* Support sets. A set made or loaded by one segmenter can be used by any segmenter over artifacts of the
 * same model (model, weights, image size, memory dtype and channels); others refuse it (FSSAM2_ERR_SUPPORT_SET). */

/* Encode `count` >= 1 annotated supports (images[i] with masks[i], same size, each showing the object)
 * into a new set, in order; all are checked before any is encoded. */
FSSAM2_API fssam2_status fssam2_support_set_encode(fssam2_segmenter *segmenter, const fssam2_view *images,
                                                   const fssam2_view *masks, size_t count, fssam2_support_set **out);
/* Read a support-set file and check it against the segmenter's artifacts: format and version, model,
 * weights, image size, memory dtype, tokens per support, and the tensor shapes. FSSAM2_ERR_SUPPORT_SET
 * with a message naming every field that differs (e.g. "weights: set sha256:ab.. != artifacts
 * random-init:seed=0"); FSSAM2_ERR_IO if the file cannot be read. */
FSSAM2_API fssam2_status fssam2_support_set_load(const fssam2_segmenter *segmenter, const char *path,
                                                 fssam2_support_set **out);
/* Write the set to `path` atomically: a temporary file in the same directory, renamed over `path`, so
 * `path` holds the old file or the complete new one, never a partial one. */
FSSAM2_API fssam2_status fssam2_support_set_save(const fssam2_support_set *set, const char *path);
/* A new set with a's supports followed by b's (both made for the same model). */
FSSAM2_API fssam2_status fssam2_support_set_combine(const fssam2_support_set *a, const fssam2_support_set *b,
                                                    fssam2_support_set **out);
FSSAM2_API fssam2_status fssam2_support_set_shots(const fssam2_support_set *set, int32_t *out);
/* The default set's supports so far, as a new set (FSSAM2_ERR_STATE if there are none). */
FSSAM2_API fssam2_status fssam2_support_set_from_default(const fssam2_segmenter *segmenter, fssam2_support_set **out);
FSSAM2_API void fssam2_support_set_free(fssam2_support_set *set); /* NULL is fine */

/* Segment a query with one set; outputs as fssam2_segment's (result->num_supports = the set's K). */
FSSAM2_API fssam2_status fssam2_segment_set(fssam2_segmenter *segmenter, const fssam2_support_set *set,
                                            const fssam2_view *query, uint8_t *mask_out, size_t mask_out_size,
                                            float *logits_out, size_t logits_out_count, fssam2_result *result);
/* N-way: segment a query with num_sets (1..255) sets, one class each; the image encoder runs once.
 * label_map_out: width*height bytes; per pixel the label 1 + i of the set i with the highest positive
 * logit, 0 (background) where no logit is > 0; ties go to the lower index. Optional (NULL to skip):
 * masks_out, num_sets*width*height bytes, class i's mask at i*width*height (0/1, logits > 0, so masks
 * may overlap where the label map picks one class); logits_out, num_sets*width*height floats, same
 * layout; results, num_sets entries. Each class's outputs equal fssam2_segment_set with its set. */
FSSAM2_API fssam2_status fssam2_segment_sets(fssam2_segmenter *segmenter, const fssam2_support_set *const *sets,
                                             size_t num_sets, const fssam2_view *query, uint8_t *label_map_out,
                                             size_t label_map_size, uint8_t *masks_out, size_t masks_out_size,
                                             float *logits_out, size_t logits_out_count, fssam2_result *results);

/* The ONNX Runtime execution providers and options `options` give `graph` (image_encoder, memory_encoder,
 * memory_attention, mask_decoder) of the artifacts: one line per option, "EP<TAB>key<TAB>value\n", and
 * "EP\n" for a provider without options, in priority order. Reads only the manifest (no session, no
 * GPU): for logs and tests. Writes a NUL-terminated string into out (out_size bytes); *needed (optional)
 * receives the size it needs, also when out is too small (then FSSAM2_ERR_INVALID_ARGUMENT). */
FSSAM2_API fssam2_status fssam2_provider_options(const char *artifacts_dir, const fssam2_options *options,
                                                 const char *graph, char *out, size_t out_size, size_t *needed);

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
