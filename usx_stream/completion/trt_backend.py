"""TensorRT backend of the completion engine: dynamo compile of the exported network, fp16, engine cache.

The engine is built once per key and kept in a cache folder::

    key = sha256(model weights hash, GPU name, TensorRT version, torch-tensorrt version, torch version,
                 input shapes, precision)

so a new checkpoint, another GPU, another TensorRT / torch or other point counts each build a fresh engine
at start-up, and an unchanged set-up loads the saved one (``torch_tensorrt.save`` / ``torch_tensorrt.load``).
``torch_tensorrt`` is imported only here, inside the functions: it cannot even be imported without CUDA.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
from collections.abc import Callable
from pathlib import Path

import torch

from usx_stream.completion.checkpoint import state_dict_hash
from usx_stream.completion.nets import CompletionNet, InferenceModule

_LOG = logging.getLogger(__name__)

_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def engine_cache_key(*, model_hash: str, gpu_name: str, trt_version: str, torch_version: str,
                     input_shapes: list[tuple[int, ...]], precision: str, torch_tensorrt_version: str = "") -> str:
    """Hex key (32 chars) of everything a built TensorRT engine depends on."""
    if precision not in _DTYPES:
        raise ValueError(f"precision must be one of {sorted(_DTYPES)}, got {precision!r}")
    payload = json.dumps({
        "model": model_hash, "gpu": gpu_name, "tensorrt": trt_version, "torch_tensorrt": torch_tensorrt_version,
        "torch": torch_version, "shapes": [list(s) for s in input_shapes], "precision": precision,
    }, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def _versions() -> tuple[str, str]:
    import tensorrt
    import torch_tensorrt

    return str(tensorrt.__version__), str(torch_tensorrt.__version__)


def _inputs_kwarg(func: Callable, inputs: list[torch.Tensor]) -> dict:
    params = inspect.signature(func).parameters
    return {"arg_inputs": inputs} if "arg_inputs" in params else {"inputs": inputs}


def _precision_kwargs(compile_fn: Callable, precision: str) -> dict:
    """Reduced precision, in whichever form this torch-tensorrt release takes it."""
    if precision == "fp32":
        return {}
    params = inspect.signature(compile_fn).parameters
    low = _DTYPES[precision]
    if "enable_autocast" in params:  # strongly typed networks with TensorRT-side autocast
        kwargs = {"enable_autocast": True}
        if "use_explicit_typing" in params:  # autocast rewrites the types of a strongly typed network
            kwargs["use_explicit_typing"] = True
        if "autocast_low_precision_type" in params:
            kwargs["autocast_low_precision_type"] = low
        return kwargs
    kwargs = {"enabled_precisions": {torch.float32, low}}
    if "use_explicit_typing" in params:  # enabled_precisions only applies to weakly typed networks
        kwargs["use_explicit_typing"] = False
    return kwargs


def build_or_load(model: CompletionNet, inputs: list[torch.Tensor], *, precision: str,
                  cache_dir: str | Path) -> tuple[torch.nn.Module, str]:
    """A TensorRT-compiled inference module for ``inputs``' shapes, from the cache when the key matches.

    Parameters
    ----------
    model : network on the CUDA device the engine targets
    inputs : example inputs (CUDA, float32) with the fixed shapes of the engine
    precision : "fp16", "bf16" or "fp32"
    cache_dir : engine cache folder

    Returns
    -------
    (module called as ``module(*inputs)``, a line saying whether it was loaded or built)
    """
    import torch_tensorrt

    device = inputs[0].device
    trt_version, tt_version = _versions()
    key = engine_cache_key(model_hash=state_dict_hash(model), gpu_name=torch.cuda.get_device_name(device),
                           trt_version=trt_version, torch_tensorrt_version=tt_version,
                           torch_version=torch.__version__, input_shapes=[tuple(x.shape) for x in inputs],
                           precision=precision)
    cache = Path(cache_dir)
    path = cache / f"completion-{key}.ep"
    if path.is_file():
        try:
            module = torch_tensorrt.load(str(path)).module()
            return module, f"loaded cached engine {path}"
        except (RuntimeError, OSError, ValueError) as e:  # stale or partial file: rebuild it
            _LOG.warning("cached TensorRT engine %s unusable (%s); rebuilding", path, e)
    module = InferenceModule(model).eval()
    with torch.no_grad():
        program = torch.export.export(module, tuple(inputs))
    compile_fn = torch_tensorrt.dynamo.compile
    options = _precision_kwargs(compile_fn, precision)
    _LOG.info("building TensorRT engine (%s) with %s", precision, sorted(options))
    trt_module = compile_fn(program, **_inputs_kwarg(compile_fn, inputs), **options)
    cache.mkdir(parents=True, exist_ok=True)
    torch_tensorrt.save(trt_module, str(path), output_format="exported_program",
                        **_inputs_kwarg(torch_tensorrt.save, inputs))
    path.with_suffix(".json").write_text(json.dumps({
        "key": key, "gpu": torch.cuda.get_device_name(device), "tensorrt": trt_version,
        "torch_tensorrt": tt_version, "torch": torch.__version__, "precision": precision,
        "shapes": [list(x.shape) for x in inputs]}, indent=1))
    return trt_module, f"built engine and saved it to {path}"
