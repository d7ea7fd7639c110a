"""The completion engine on CPU (eager, backend selection, batching, mm round trip), the TensorRT cache key,
and GPU backends against eager (skipped without CUDA)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from tiny_models import tiny_config, tiny_inputs

from usx_stream.completion import normalize
from usx_stream.completion.checkpoint import state_dict_hash
from usx_stream.completion.engine import CompletionEngine
from usx_stream.completion.nets import InferenceModule, build_model
from usx_stream.completion.trt_backend import engine_cache_key


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return build_model(tiny_config()).eval()


def test_cpu_runs_eager_and_says_why(tiny_model, caplog):
    with caplog.at_level(logging.INFO, logger="usx_stream.completion.engine"):
        engine = CompletionEngine(tiny_model, device="cpu", max_batch=3)
    assert engine.backend == "eager"
    assert set(engine.not_used) == {"tensorrt", "compiled"}
    line = [r.getMessage() for r in caplog.records if "completion backend" in r.getMessage()]
    assert line and "eager on cpu" in line[0] and "tensorrt not used: needs a CUDA device" in line[0]


def test_explicit_backend_that_cannot_run_raises(tiny_model):
    with pytest.raises(RuntimeError, match="tensorrt cannot run: needs a CUDA device"):
        CompletionEngine(tiny_model, device="cpu", backend="tensorrt", warmup=False)
    with pytest.raises(ValueError, match="backend"):
        CompletionEngine(tiny_model, device="cpu", backend="onnx", warmup=False)
    with pytest.raises(ValueError, match="precision"):
        CompletionEngine(tiny_model, device="cpu", precision="fp16", warmup=False)


def test_run_device_chunks_and_matches_the_model(tiny_model):
    engine = CompletionEngine(tiny_model, device="cpu", max_batch=3, warmup=False)
    partial, labelmap = tiny_inputs(tiny_model.cfg, 7, seed=2)
    got = engine.run_device(partial, labelmap)
    with torch.no_grad():
        expected = tiny_model(partial, labelmap)["fine"]
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="labelmap"):
        engine.run_device(partial, None)
    assert engine.run_device(partial[:0], labelmap[:0]).shape == (0, tiny_model.cfg.num_out, 3)


def test_complete_in_millimetres(tiny_model):
    engine = CompletionEngine(tiny_model, device="cpu", warmup=False)
    rng = np.random.default_rng(3)
    partials = [rng.normal([100.0, 50.0, 200.0], 15.0, (300, 3)), rng.normal(0.0, 10.0, (40, 3)), np.zeros((0, 3))]
    labelmaps = [rng.normal([100.0, 30.0, 200.0], 10.0, (90, 3)), None, rng.normal(0, 5, (20, 3))]
    out = engine.complete(partials, labelmaps)
    assert out[0].shape == (tiny_model.cfg.num_out, 3)
    assert out[1].shape == (0, 3) and out[2].shape == (0, 3)  # no labelmap / no partial points
    centre = normalize.canonical_center(partials[0], labelmaps[0])
    p = normalize.resample(normalize.normalize(partials[0], center_mm=centre), tiny_model.cfg.num_partial)
    lm = normalize.resample(normalize.normalize(labelmaps[0], center_mm=centre), tiny_model.cfg.num_labelmap)
    with torch.no_grad():
        unit = tiny_model(torch.from_numpy(p)[None], torch.from_numpy(lm)[None])["fine"][0].numpy()
    np.testing.assert_allclose(out[0], normalize.denormalize(unit, center_mm=centre), atol=1e-3)
    with pytest.raises(ValueError, match="labelmaps_mm"):
        engine.complete(partials, labelmaps[:1])


def test_cache_key_changes_with_weights_shapes_and_versions(tiny_model):
    base = dict(model_hash=state_dict_hash(tiny_model), gpu_name="NVIDIA H100 80GB HBM3", trt_version="11.0.0",
                torch_tensorrt_version="2.13.0", torch_version="2.13.0",
                input_shapes=[(5, 64, 3), (5, 32, 3)], precision="fp16")
    key = engine_cache_key(**base)
    assert key == engine_cache_key(**base) and len(key) == 32
    changed = build_model(tiny_config())
    with torch.no_grad():
        changed.load_state_dict(tiny_model.state_dict())
        changed.decoder.conv_cup2.bias[0] += 1e-4
    variants = [dict(model_hash=state_dict_hash(changed)), dict(gpu_name="NVIDIA H200"),
                dict(trt_version="11.1.0"), dict(torch_tensorrt_version="2.13.1"), dict(torch_version="2.11.0"),
                dict(input_shapes=[(5, 128, 3), (5, 32, 3)]), dict(input_shapes=[(1, 64, 3), (1, 32, 3)]),
                dict(precision="bf16")]
    keys = {engine_cache_key(**{**base, **v}) for v in variants}
    assert key not in keys and len(keys) == len(variants)
    with pytest.raises(ValueError, match="precision"):
        engine_cache_key(**{**base, "precision": "int8"})


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.gpu
@cuda
def test_gpu_auto_backend_matches_eager(tiny_model):
    engine = CompletionEngine(tiny_model, device="cuda", max_batch=5)
    eager = CompletionEngine(tiny_model, device="cuda", backend="eager", precision="fp32", max_batch=5)
    partial, labelmap = (x.cuda() for x in tiny_inputs(tiny_model.cfg, 5, seed=4))
    got, ref = engine.run_device(partial, labelmap), eager.run_device(partial, labelmap)
    assert engine.backend in ("tensorrt", "compiled")
    # Stated tolerance for reduced precision: mean point error below 0.01 unit (0.5 mm).
    assert (got - ref).norm(dim=-1).mean().item() < 1e-2


def test_network_compiles_as_one_graph_under_autocast(tiny_model):
    # The compiled GPU backend relies on torch.compile capturing the whole network (no graph break) with
    # reduced-precision autocast on, and on one recompile serving every batch size after the first;
    # aot_eager checks the same capture on CPU without generating kernels.
    module = InferenceModule(tiny_model)
    aot_eager = torch._dynamo.lookup_backend("aot_eager")
    graphs = []

    def counting(gm, example_inputs):
        graphs.append(gm)
        return aot_eager(gm, example_inputs)

    compiled = torch.compile(module, backend=counting, fullgraph=True, dynamic=None)
    for batch in (1, 2, 3):
        partial, labelmap = tiny_inputs(tiny_model.cfg, batch, seed=6)
        with torch.inference_mode():
            with torch.autocast("cpu", dtype=torch.bfloat16):
                got = compiled(partial, labelmap).float()
            ref = module(partial, labelmap)
        assert (got - ref).norm(dim=-1).mean() < 1e-2
    assert len(graphs) == 2


def test_trt_precision_options_follow_the_compile_signature():
    from usx_stream.completion.trt_backend import _precision_kwargs

    def strongly_typed(program, *, arg_inputs=None, use_explicit_typing=True, enable_autocast=False,
                       autocast_low_precision_type=None):
        return program

    def weakly_typed(program, *, inputs=None, enabled_precisions=None, use_explicit_typing=False):
        return program

    assert _precision_kwargs(strongly_typed, "fp16") == {
        "enable_autocast": True, "use_explicit_typing": True, "autocast_low_precision_type": torch.float16}
    assert _precision_kwargs(weakly_typed, "bf16") == {
        "enabled_precisions": {torch.float32, torch.bfloat16}, "use_explicit_typing": False}
    assert _precision_kwargs(weakly_typed, "fp32") == {}


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("backend", ["compiled", "tensorrt"])
def test_gpu_backend_matches_eager_for_one_and_five(tiny_model, backend, tmp_path):
    if backend == "tensorrt":
        pytest.importorskip("torch_tensorrt")
    engine = CompletionEngine(tiny_model, device="cuda", backend=backend, max_batch=5, cache_dir=tmp_path)
    eager = CompletionEngine(tiny_model, device="cuda", backend="eager", precision="fp32", max_batch=5)
    for batch in (1, 5):
        partial, labelmap = (x.cuda() for x in tiny_inputs(tiny_model.cfg, batch, seed=batch))
        err = (engine.run_device(partial, labelmap) - eager.run_device(partial, labelmap)).norm(dim=-1)
        assert err.mean().item() < 1e-2
    if backend == "tensorrt":  # a second engine with the same key loads the cached one
        again = CompletionEngine(tiny_model, device="cuda", backend=backend, max_batch=5, cache_dir=tmp_path)
        assert "loaded cached engine" in again.describe()


def test_eager_cpu_engine_with_tree_knn_matches_the_plain_network(tiny_model):
    # The eager CPU engine runs kNN on a k-d tree; the completions must be those of the network as
    # exported (topk over distance matrices), up to equal-distance neighbours swapping.
    engine = CompletionEngine(tiny_model, device="cpu", backend="eager", precision="fp32", max_batch=5)
    partial, labelmap = tiny_inputs(tiny_model.cfg, 5, seed=9)
    with torch.inference_mode():
        ref = InferenceModule(tiny_model)(partial, labelmap)
    got = engine.run_device(partial, labelmap)
    err = (got - ref).norm(dim=-1)
    assert err.mean().item() < 1e-3 and (err > 1e-2).float().mean().item() < 0.01
