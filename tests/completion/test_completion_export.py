"""TensorRT readiness on CPU: torch.export graph size and operators, ONNX Runtime against eager."""

from __future__ import annotations

import json

import pytest
import torch
from tiny_models import tiny_config

from usx_stream.completion import export
from usx_stream.completion.nets import build_model

# torch.export internals warn about their own pytree API; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec.*:FutureWarning")


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return build_model(tiny_config()).eval()


@pytest.fixture(scope="module")
def core_program(tiny_model):
    return export.core_aten(export.export_program(tiny_model, batch=2))


def test_exported_graph_is_fully_convertible(core_program):
    assert export.unconvertible_ops(core_program) == []
    stats = export.graph_stats(core_program)
    assert "aten.topk.default" in stats["ops"] and "aten.index_select.default" in stats["ops"]
    assert stats["nodes"] < 1500


def test_graph_size_does_not_depend_on_point_counts(core_program):
    bigger = build_model(tiny_config(num_partial=128, num_labelmap=64, refine_partial=64, refine_labelmap=32,
                                     num_coarse_raw=64, num_out=256, pool_points=(80, 40, 20))).eval()
    other = export.core_aten(export.export_program(bigger, batch=2))
    assert export.graph_stats(other)["nodes"] == export.graph_stats(core_program)["nodes"]


def test_fps_traces_one_step_per_sample():
    small, large = export.fps_export_nodes(64, 8), export.fps_export_nodes(64, 24)
    assert large - small >= 16 * 4  # several nodes per sampling step: why the network avoids it


def test_unconvertible_ops_are_reported(tiny_model):
    class Cumprod(torch.nn.Module):
        def forward(self, x):
            return torch.cumprod(x, dim=1)

    program = export.core_aten(torch.export.export(Cumprod(), (torch.rand(2, 3),)))
    assert export.unconvertible_ops(program) == ["aten.cumprod.default"]


def test_converter_list_names_its_source():
    data = json.loads(export.CONVERTERS_PATH.read_text())
    assert data["source"]["repository"].endswith("pytorch/TensorRT") and len(data["source"]["commit"]) == 40
    assert "aten.topk.default" in data["converters"] and len(data["converters"]) > 150


def test_export_matches_eager(tiny_model):
    program = export.export_program(tiny_model, batch=2)
    inputs = export.example_inputs(tiny_model.cfg, 2, seed=5)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(*inputs), tiny_model(*inputs)["fine"], rtol=1e-5, atol=1e-6)


def test_onnx_runtime_matches_eager(tiny_model, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    path = export.export_onnx(tiny_model, tmp_path / "tiny.onnx", batch=2)
    agreement = export.onnx_agreement(tiny_model, path, batch=2)
    assert agreement["assd_mm"] < 0.01 * export.ONNX_ASSD_MM and agreement["max_abs_unit"] < 1e-4, agreement


@pytest.mark.slow
def test_the_shipped_weights_export_to_onnx_and_agree_with_eager(tmp_path, capsys):
    """Index-wise the shipped network's ONNX output differs from eager's by ~1e-2 units (near-ties in its
    rankings), which the earlier index-wise check at 1e-4 refused; as surfaces the two agree."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from usx_stream.cli import main

    assert main(["export", "--model", "default", "--onnx", str(tmp_path / "m.onnx"),
                 "--json", str(tmp_path / "m.json")]) == 0
    report = json.loads((tmp_path / "m.json").read_text())
    assert report["onnx_vs_eager"]["assd_mm"] <= report["onnx_tolerance_assd_mm"] == export.ONNX_ASSD_MM
    assert "ONNX Runtime vs eager: surfaces" in capsys.readouterr().out


def test_fps_models_are_refused():
    with pytest.raises(ValueError, match="sampling"):
        export.export_program(build_model(tiny_config(sampling="fps")))
