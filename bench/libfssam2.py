"""ctypes binding of libfssam2's C API (runtime/cpp/include/fssam2/fssam2.h) for Python-side tools and tests: the
structs, the function signatures, and `CppSegmenter`, FewShotSegmenter's interface over the C API.

    lib = load("build/cpp/libfssam2.so"); seg = CppSegmenter(lib, "artifacts/"); s = seg.encode([(rgb, mask)])
"""

from __future__ import annotations

import ctypes as C
from pathlib import Path

import numpy as np

OK, INVALID, MANIFEST, PROVIDER, STATE, RUNTIME, OOM, IO, SUPPORT_SET = range(9)


class View(C.Structure):
    _fields_ = [("data", C.c_void_p), ("width", C.c_int32), ("height", C.c_int32), ("stride", C.c_int32)]


class OptionsV1(C.Structure):
    """fssam2_options as libfssam2 0.1 declared it (an older caller)."""

    _fields_ = [
        ("struct_size", C.c_uint32),
        ("provider", C.c_char_p),
        ("intra_op_threads", C.c_int32),
        ("verify_sha256", C.c_int32),
    ]


class Options(C.Structure):
    _fields_ = [
        *OptionsV1._fields_,
        ("device_id", C.c_int32),
        ("max_shots", C.c_int32),
        ("trt_cache_dir", C.c_char_p),
        ("trt_workspace_bytes", C.c_int64),
    ]


class Result(C.Structure):
    _fields_ = [("score", C.c_float), ("object_score", C.c_float), ("num_supports", C.c_int32)]


SIGNATURES = {
    "fssam2_last_error": ([], C.c_char_p),
    "fssam2_options_init": ([C.c_void_p], None),
    "fssam2_options_init_sized": ([C.c_void_p, C.c_uint32], None),
    "fssam2_create": ([C.c_char_p, C.c_void_p, C.POINTER(C.c_void_p)], C.c_int),
    "fssam2_destroy": ([C.c_void_p], None),
    "fssam2_add_support": ([C.c_void_p, C.POINTER(View), C.POINTER(View)], C.c_int),
    "fssam2_segment": (
        [C.c_void_p, C.POINTER(View), C.c_void_p, C.c_size_t, C.c_void_p, C.c_size_t, C.POINTER(Result)],
        C.c_int,
    ),
    "fssam2_reset": ([C.c_void_p], C.c_int),
    "fssam2_num_supports": ([C.c_void_p, C.POINTER(C.c_int32)], C.c_int),
    "fssam2_preprocess": ([C.c_void_p, C.POINTER(View), C.c_void_p, C.c_size_t], C.c_int),
    "fssam2_resize_mask": ([C.POINTER(View), C.c_int32, C.c_void_p, C.c_size_t], C.c_int),
    "fssam2_postprocess_logits": (
        [C.c_void_p, C.c_int32, C.c_int32, C.c_int32, C.c_int32, C.c_int32, C.c_void_p, C.c_size_t],
        C.c_int,
    ),
    "fssam2_support_set_encode": (
        [C.c_void_p, C.POINTER(View), C.POINTER(View), C.c_size_t, C.POINTER(C.c_void_p)],
        C.c_int,
    ),
    "fssam2_support_set_load": ([C.c_void_p, C.c_char_p, C.POINTER(C.c_void_p)], C.c_int),
    "fssam2_support_set_save": ([C.c_void_p, C.c_char_p], C.c_int),
    "fssam2_support_set_free": ([C.c_void_p], None),
    "fssam2_segment_set": (
        [C.c_void_p, C.c_void_p, C.POINTER(View), C.c_void_p, C.c_size_t, C.c_void_p, C.c_size_t, C.POINTER(Result)],
        C.c_int,
    ),
    "fssam2_segment_sets": (
        [
            C.c_void_p,
            C.POINTER(C.c_void_p),
            C.c_size_t,
            C.POINTER(View),
            C.c_void_p,
            C.c_size_t,
            C.c_void_p,
            C.c_size_t,
            C.c_void_p,
            C.c_size_t,
            C.POINTER(Result),
        ],
        C.c_int,
    ),
    "fssam2_provider_options": (
        [C.c_char_p, C.c_void_p, C.c_char_p, C.c_char_p, C.c_size_t, C.POINTER(C.c_size_t)],
        C.c_int,
    ),
}


def load(path: str | Path) -> C.CDLL:
    """libfssam2 with every function's argument and result types set."""
    so = C.CDLL(str(path))
    for name, (args, res) in SIGNATURES.items():
        getattr(so, name).argtypes, getattr(so, name).restype = args, res
    return so


def view(a: np.ndarray) -> View:
    """A view of a C-contiguous (H, W, 3) or (H, W) uint8 array (keep `a` alive while it is used)."""
    assert a.dtype == np.uint8 and a.flags.c_contiguous
    return View(a.ctypes.data, a.shape[1], a.shape[0], a.strides[0])


class CppError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(f"status {status}: {message}")
        self.status, self.message = status, message


class CppSegmenter:
    """FewShotSegmenter's interface over the C API."""

    def __init__(self, lib: C.CDLL, artifacts: Path, provider: str = "cpu", verify_sha256: bool = True):
        self.lib, self.handle = lib, C.c_void_p()
        opts = Options()
        lib.fssam2_options_init_sized(C.byref(opts), C.sizeof(Options))
        opts.provider, opts.verify_sha256 = provider.encode(), int(verify_sha256)
        self._check(lib.fssam2_create(str(artifacts).encode(), C.byref(opts), C.byref(self.handle)))

    def _check(self, status: int) -> None:
        if status != OK:
            raise CppError(status, self.lib.fssam2_last_error().decode())

    def encode(self, supports: list[tuple[np.ndarray, np.ndarray]]) -> C.c_void_p:
        """A new support set (free it with free_set)."""
        arrays = [(np.ascontiguousarray(i), np.ascontiguousarray(m, dtype=np.uint8)) for i, m in supports]
        images = (View * len(arrays))(*(view(i) for i, _ in arrays))
        masks = (View * len(arrays))(*(view(m) for _, m in arrays))
        out = C.c_void_p()
        self._check(self.lib.fssam2_support_set_encode(self.handle, images, masks, len(arrays), C.byref(out)))
        return out

    def load_set(self, path: Path) -> C.c_void_p:
        out = C.c_void_p()
        self._check(self.lib.fssam2_support_set_load(self.handle, str(path).encode(), C.byref(out)))
        return out

    def save_set(self, handle: C.c_void_p, path: Path) -> None:
        self._check(self.lib.fssam2_support_set_save(handle, str(path).encode()))

    def free_set(self, handle: C.c_void_p) -> None:
        self.lib.fssam2_support_set_free(handle)

    def segment_set(self, handle: C.c_void_p, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, Result]:
        mask = np.zeros(rgb.shape[:2], np.uint8)
        logits = np.zeros(rgb.shape[:2], np.float32)
        res = Result()
        self._check(
            self.lib.fssam2_segment_set(
                self.handle,
                handle,
                view(np.ascontiguousarray(rgb)),
                mask.ctypes.data,
                mask.size,
                logits.ctypes.data,
                logits.size,
                C.byref(res),
            )
        )
        return mask.astype(bool), logits, res

    def segment_sets(self, handles: list[C.c_void_p], rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(label map, per-class masks (N, H, W), per-class logits (N, H, W))."""
        n, (h, w) = len(handles), rgb.shape[:2]
        labels = np.zeros((h, w), np.uint8)
        masks, logits = np.zeros((n, h, w), np.uint8), np.zeros((n, h, w), np.float32)
        sets = (C.c_void_p * n)(*handles)
        self._check(
            self.lib.fssam2_segment_sets(
                self.handle,
                sets,
                n,
                view(np.ascontiguousarray(rgb)),
                labels.ctypes.data,
                labels.size,
                masks.ctypes.data,
                masks.size,
                logits.ctypes.data,
                logits.size,
                None,
            )
        )
        return labels, masks.astype(bool), logits

    def add_support(self, rgb: np.ndarray, mask: np.ndarray) -> None:
        rgb, m = np.ascontiguousarray(rgb), np.ascontiguousarray(mask, dtype=np.uint8)
        self._check(self.lib.fssam2_add_support(self.handle, view(rgb), view(m)))

    def segment(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, Result]:
        rgb = np.ascontiguousarray(rgb)
        mask = np.zeros(rgb.shape[:2], np.uint8)
        logits = np.zeros(rgb.shape[:2], np.float32)
        res = Result()
        self._check(
            self.lib.fssam2_segment(
                self.handle, view(rgb), mask.ctypes.data, mask.size, logits.ctypes.data, logits.size, C.byref(res)
            )
        )
        return mask.astype(bool), logits, res

    def preprocess(self, rgb: np.ndarray, size: int) -> np.ndarray:
        rgb = np.ascontiguousarray(rgb)
        out = np.zeros((1, 3, size, size), np.float32)
        self._check(self.lib.fssam2_preprocess(self.handle, view(rgb), out.ctypes.data, out.size))
        return out

    def close(self) -> None:
        self.lib.fssam2_destroy(self.handle)
        self.handle = C.c_void_p()


def cpp_predictor(build_dir: str | Path, artifacts: str | Path):
    """A `training.evaluate` predictor over libfssam2: one support set per class, the N-way label map."""
    seg = CppSegmenter(load(Path(build_dir) / "libfssam2.so"), Path(artifacts))

    def predict(ep) -> np.ndarray:
        sets = [seg.encode(supports) for supports in ep.supports]
        try:
            return seg.segment_sets(sets, ep.query)[0].astype(np.int32)
        finally:
            for handle in sets:
                seg.free_set(handle)

    return predict
