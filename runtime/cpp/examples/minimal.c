/* The README's example: a 1-shot episode on a synthetic image, through the C API. */
#include <fssam2/fssam2.h>
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv) {
    enum { W = 320, H = 240 };
    static uint8_t rgb[H * W * 3], mask[H * W], pred[H * W];
    for (int i = 0; i < H * W; ++i) {  /* a bright square on a dark gradient */
        int x = i % W, y = i / W, in = x > 100 && x < 200 && y > 60 && y < 160;
        rgb[3 * i] = in ? 230 : (uint8_t)x / 4, rgb[3 * i + 1] = in ? 200 : 40, rgb[3 * i + 2] = (uint8_t)y / 2;
        mask[i] = (uint8_t)in;
    }
    fssam2_view image = {rgb, W, H, 0}, support_mask = {mask, W, H, 0};
    fssam2_segmenter *seg = NULL;
    fssam2_result info;
    if (argc < 2 || fssam2_create(argv[1], NULL, &seg) != FSSAM2_OK ||       /* NULL options: cpu */
        fssam2_add_support(seg, &image, &support_mask) != FSSAM2_OK ||         /* K times */
        fssam2_segment(seg, &image, pred, sizeof pred, NULL, 0, &info) != FSSAM2_OK) {
        fprintf(stderr, "fssam2: %s\n", argc < 2 ? "usage: fssam2_example_c ARTIFACTS_DIR" : fssam2_last_error());
        fssam2_destroy(seg);
        return 1;
    }
    long fg = 0;
    for (int i = 0; i < H * W; ++i) fg += pred[i];
    printf("%ld of %d px foreground, predicted IoU %.3f\n", fg, H * W, info.score);
    fssam2_destroy(seg);
    return 0;
}
