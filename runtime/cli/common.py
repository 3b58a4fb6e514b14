"""What the `fssam2` subcommands share: the runtime-options group that every command running graphs takes (one
`RuntimeOptions` from it), and `require` (an optional dependency, or the pip extra that installs it)."""

from __future__ import annotations

import argparse
import importlib

from ..engine.backend import registered_providers
from ..engine.errors import InputError
from ..engine.options import RuntimeOptions

PROVIDER_HELP = (
    "cpu/cuda/tensorrt: ONNX Runtime (and its EPs); tensorrt-native: the manifest's TensorRT engines; "
    "openvino: OpenVINO on the CPU (pip install 'fssam2[openvino]')"
)


def add_runtime_options(parser: argparse.ArgumentParser, *, sweep: bool = False) -> None:
    """The flags of `RuntimeOptions` (read back by `options_from_args`); `sweep`: `--providers P [P ...]` instead
    of `--provider P`, for a command that runs every provider given (default cpu; `parser.set_defaults(providers=...)`
    changes it)."""
    g = parser.add_argument_group("runtime options", "how the graphs run (RuntimeOptions)")
    if sweep:
        g.add_argument("--providers", nargs="+", default=["cpu"], choices=registered_providers(), help=PROVIDER_HELP)
    else:
        g.add_argument("--provider", default="cpu", choices=registered_providers(), help=PROVIDER_HELP)
    g.add_argument(
        "--threads",
        type=int,
        help="inference threads (ONNX Runtime intra-op / OpenVINO; default: the library's choice)",
    )
    g.add_argument(
        "--ov-precision",
        type=precision_spec,
        metavar="SPEC",
        help="openvino: inference precision, bf16|fp16|fp32 for all graphs and/or GRAPH=PREC,... "
        "(default: the export's openvino flavours, else bf16 where the CPU offers it, else fp32; "
        "an INT8 export's mask decoder fp32)",
    )
    g.add_argument("--device-id", type=int, default=0, help="the GPU for cuda, tensorrt and tensorrt-native")
    g.add_argument(
        "--no-cache",
        action="store_true",
        help="neither read nor write the pre-optimised ONNX Runtime models and compiled OpenVINO blobs",
    )
    g.add_argument(
        "--cache-dir", help="where those are kept (default: <artifacts>/.ort_cache or .openvino_cache, else ~/.cache)"
    )


def options_from_args(args: argparse.Namespace, provider: str | None = None, **fields) -> RuntimeOptions:
    """The `RuntimeOptions` the group's flags give; `fields`: what the command sets itself (e.g. max_shots).
    `provider`: one run of a sweep (`--providers`), which takes `--ov-precision` only if it is openvino."""
    if provider is None:
        provider, precision = args.provider, args.ov_precision or {}
    else:
        precision = (args.ov_precision or {}) if provider == "openvino" else {}
    return RuntimeOptions(
        provider,
        args.threads,
        precision,
        device_id=args.device_id,
        cache=not args.no_cache,
        cache_dir=args.cache_dir,
        **fields,
    )


def precision_spec(text: str) -> dict[str, str]:
    """'bf16' -> {'*': 'bf16'}; 'bf16,mask_decoder=fp32' -> {'*': 'bf16', 'mask_decoder': 'fp32'}."""
    spec = {}
    for item in filter(None, text.split(",")):
        graph, _, precision = item.rpartition("=")
        spec[graph or "*"] = precision
    return spec


def require(module: str, extra: str) -> None:
    """Import `module` or say which extra installs it."""
    try:
        importlib.import_module(module)
    except ImportError as e:
        raise InputError(f"this needs {module}: pip install 'fssam2[{extra}]' ({e})") from None
