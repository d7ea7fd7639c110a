"""Saving and loading completion models: our own checkpoints, the shipped defaults, and checkpoints of the
public US-X Complete code (``models/vrcnet_multimodal.py``, saved by its ``train.py`` as
``{"net_state_dict": state_dict}``, keys possibly prefixed ``module.`` by ``DataParallel``).

Our format is a plain dict (loads with ``torch.load(weights_only=True)``)::

    {"format": "usx-completion/1", "config": ModelConfig.to_dict(), "state_dict": ..., "extra": {...}}
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import torch

from usx_stream.completion.nets import CompletionNet, ModelConfig, build_model
from usx_stream.errors import InputError

_LOG = logging.getLogger(__name__)

FORMAT = "usx-completion/1"
VARIANTS = ("multimodal", "us_only")
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"

# Parameters of the original decoder that its published configuration (num_coarse = num_fine = num_fps) never
# uses: the expansion / folding stage and the score head. They are dropped on load.
_ORIGINAL_UNUSED = ("decoder.expansion1.", "decoder.expansion2.", "decoder.conv_s1.", "decoder.conv_s2.",
                    "decoder.conv_s3.", "decoder.conv_f1.", "decoder.conv_f2.")


def save_checkpoint(path: str | Path, model: CompletionNet, cfg: ModelConfig, extra: dict | None = None) -> Path:
    """Write ``model`` (weights), ``cfg`` and ``extra`` (plain data: numbers, strings, lists, dicts) to ``path``."""
    if not isinstance(cfg, ModelConfig):
        raise ValueError(f"cfg must be a ModelConfig, got {type(cfg).__name__}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save({"format": FORMAT, "config": cfg.to_dict(), "state_dict": state, "extra": dict(extra or {})}, path)
    return path


def read_torch_file(path: Path, what: str, *, map_location: str | torch.device = "cpu"):
    """``torch.load(path, weights_only=True)`` of a file the user named: one that is not a torch file (text, a
    truncated download, another format) is bad input naming ``what`` and the path, not an unpickling traceback."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - whatever the unpickler or zip reader met, the file is at fault
        reason = " ".join(str(e).split())   # torch's zip errors run over several lines
        raise InputError(f"{path}: not a readable {what} ({type(e).__name__}: {reason})") from None


def load_checkpoint(path: str | Path, *, map_location: str | torch.device = "cpu"
                    ) -> tuple[CompletionNet, ModelConfig, dict]:
    """Read a checkpoint written by ``save_checkpoint``.

    Returns
    -------
    (model in eval mode, its ModelConfig, the extra dict)
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"completion checkpoint not found: {path}")
    data = read_torch_file(path, "completion checkpoint", map_location=map_location)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        found = data.get("format") if isinstance(data, dict) else None
        raise InputError(f"{path} is not a {FORMAT} checkpoint (format={found!r}); "
                         "checkpoints of the public US-X Complete code load with load_original_checkpoint()")
    cfg = ModelConfig.from_dict(data["config"])
    model = build_model(cfg)
    model.load_state_dict(data["state_dict"])
    return model.eval(), cfg, dict(data.get("extra") or {})


def default_path(variant: str = "multimodal") -> Path:
    """Path of the shipped checkpoint of ``variant`` ('multimodal' or 'us_only')."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    return WEIGHTS_DIR / f"{variant}.pt"


def load_default(variant: str = "multimodal") -> tuple[CompletionNet, ModelConfig, dict]:
    """Load the shipped checkpoint ``usx_stream/completion/weights/{variant}.pt``."""
    path = default_path(variant)
    if not path.is_file():
        raise FileNotFoundError(f"default {variant} completion model not found: {path} "
                                "(train one with `usx-stream train` and save it there)")
    return load_checkpoint(path)


def state_dict_hash(model: torch.nn.Module) -> str:
    """SHA-256 over parameter/buffer names, shapes, dtypes and values (hex)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def _unwrap_original(obj: dict) -> dict[str, torch.Tensor]:
    state = obj.get("net_state_dict", obj)
    if not isinstance(state, dict) or not state:
        raise ValueError("original checkpoint holds no state dict ('net_state_dict')")
    out = {}
    for key, value in state.items():
        key = key[len("module."):] if key.startswith("module.") else key
        # The original US-only VRCNet names its partial-cloud encoder 'encoder'.
        if key.startswith("encoder."):
            key = "encoder_pcd." + key[len("encoder."):]
        out[key] = value
    return out


def infer_original_config(state: dict[str, torch.Tensor], *, multimodal: bool | None = None,
                          **overrides) -> ModelConfig:
    """ModelConfig matching an original state dict (after ``module.`` stripping).

    Layer sizes come from the tensors; point counts are not stored in a state dict, so they default to the
    published configuration (4096 partial, labelmap and output points; pooling 1536/768/384, pk 10,
    furthest point sampling) and can be overridden by keyword.
    """
    state = _unwrap_original(state)
    enc = "decoder.encoder."
    sa = enc + "sam_res1.sam.0.sams.0."
    rel = state[sa + "conv1.weight"].shape[0]
    kernels = sorted({int(k.split(".")[6]) for k in state if k.startswith(enc + "sam_res1.sam.0.sams.")})
    knn = tuple(state[enc + f"sam_res1.sam.0.sams.{j}.conv_w.1.weight"].shape[1] // rel - 1 for j in kernels)
    layers = tuple(len({k.split(".")[4] for k in state if k.startswith(enc + f"sam_res{i}.sam.")})
                   for i in range(1, 5))
    has_labelmap = "encoder_labelmap.conv1.weight" in state
    mm = has_labelmap if multimodal is None else multimodal
    if mm and not has_labelmap:
        raise ValueError("multimodal=True but the state dict has no encoder_labelmap")
    values = dict(
        multimodal=mm, num_partial=4096, num_labelmap=4096 if mm else 0,
        num_coarse_raw=state["decoder.fc3.weight"].shape[0] // 3, num_out=4096, refine_partial=4096,
        refine_labelmap=4096 if mm else 0, up_ratio=1,
        latent=state["posterior_infer2.conv2.weight"].shape[0] // 2,
        feature_size=state["decoder.fc1.weight"].shape[0],
        pcn_widths=(state["encoder_pcd.conv1.weight"].shape[0], state["encoder_pcd.conv2.weight"].shape[0],
                    state["encoder_pcd.conv3.weight"].shape[0]),
        points_label=state[enc + "sam_res1.conv1.weight"].shape[1] == 6,
        renet_channels=state[enc + "sam_res1.conv1.weight"].shape[0], renet_layers=layers,
        renet_global=state[enc + "conv5.weight"].shape[0], renet_fc_hidden=state[enc + "fc1.weight"].shape[0],
        dense_feature=state[enc + "conv_out.weight"].shape[0],
        expand_feature=state["decoder.conv_cup1.weight"].shape[0],
        knn=knn, pool_k=10, pool_points=(1536, 768, 384), sampling="fps")
    values.update(overrides)
    return ModelConfig(**values)


def load_original_state_dict(obj: dict, *, multimodal: bool | None = None, **overrides
                             ) -> tuple[CompletionNet, ModelConfig]:
    """Build our network from a state dict in the layout of the public ``vrcnet_multimodal`` code.

    Conv1d / Conv2d 1x1 weights lose their kernel axes (our layers are ``nn.Linear``); the parameters of the
    decoder stages the published configuration never runs are dropped (listed in the log). A US-only load of
    a multimodal checkpoint also drops the labelmap encoder and the fusion MLP.

    Returns
    -------
    (model in eval mode, its ModelConfig)
    """
    state = _unwrap_original(obj)
    cfg = infer_original_config(state, multimodal=multimodal, **overrides)
    model = build_model(cfg)
    ours = model.state_dict()
    loaded, dropped = {}, []
    for key, value in state.items():
        if key not in ours:
            if key.startswith(_ORIGINAL_UNUSED) or (not cfg.multimodal and key.startswith(
                    ("encoder_labelmap.", "feature_selector."))):
                dropped.append(key)
                continue
            raise ValueError(f"original checkpoint key {key!r} has no counterpart in our network")
        target = ours[key].shape
        if value.shape != target:
            if value.numel() != ours[key].numel() or tuple(value.shape[:len(target)]) != tuple(target):
                raise ValueError(f"original checkpoint key {key!r}: shape {tuple(value.shape)}, "
                                 f"expected {tuple(target)}")
            value = value.reshape(target)
        loaded[key] = value
    missing = sorted(set(ours) - set(loaded))
    if missing:
        raise ValueError(f"original checkpoint lacks {len(missing)} parameters, e.g. {missing[:3]}")
    model.load_state_dict(loaded)
    if dropped:
        _LOG.info("dropped %d parameters of unused original stages: %s", len(dropped),
                  sorted({".".join(k.split(".")[:2]) for k in dropped}))
    return model.eval(), cfg


def load_original_checkpoint(path: str | Path, *, multimodal: bool | None = None, **overrides
                             ) -> tuple[CompletionNet, ModelConfig]:
    """``load_original_state_dict`` of a ``network.pth`` / ``best_*_network.pth`` file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"original checkpoint not found: {path}")
    return load_original_state_dict(read_torch_file(path, "original checkpoint"),
                                    multimodal=multimodal, **overrides)
