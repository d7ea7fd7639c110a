"""Every bad command-line or configuration input ends ``usx-stream`` with exit status 2 and one line on
stderr that names the file or key and the value; a bug keeps its traceback.

The inputs are real files written to tmp_path and the CLI runs as a subprocess, as a user runs it.
"""

from __future__ import annotations

import importlib.util
import re

import pytest

from cli_files import DEVICE_SET, N_FRAMES, run_cli, truncate, write_sequence_file
from usx_stream import cli
from usx_stream.errors import InputError

# name -> device-set text with one defect
DEVICE_SET_DEFECTS = {
    "no_coordinates.xml": re.sub(r"<CoordinateDefinitions>.*</CoordinateDefinitions>", "", DEVICE_SET, flags=re.S),
    "no_image_to_probe.xml": DEVICE_SET.replace('From="Image" To="Probe"', 'From="Phantom" To="Reference"'),
    "no_matrix.xml": re.sub(r'Matrix="[^"]*"', "", DEVICE_SET),
    "matrix_15.xml": DEVICE_SET.replace("0 0 0.1 0\n", "0 0.1 0\n"),
    "no_volume_reconstruction.xml": re.sub(r"<VolumeReconstruction.*?/>", "", DEVICE_SET, flags=re.S),
    "truncated.xml": DEVICE_SET[: DEVICE_SET.index("<VolumeReconstruction") + 30],
}
SEED_LEVELS = ("T12", "L1", "L2", "L3", "L4", "L5", "S1")
LAUNCH_FILES = {
    "unknown_key.toml": "[compound]\nspacing_mn = 0.5\n",
    "wrong_type.toml": '[compound]\nspacing_mm = "fine"\n',
    "bad.toml": "[compound\nspacing_mm = 0.5\n",
}


@pytest.fixture
def inputs(tmp_path):
    write_sequence_file(tmp_path / "good.igs.mha")
    truncate(write_sequence_file(tmp_path / "truncated.igs.mha"))
    truncate(write_sequence_file(tmp_path / "truncated_zlib.igs.mha", compress=True))
    (tmp_path / "good.xml").write_text(DEVICE_SET)
    for name, text in {**DEVICE_SET_DEFECTS, **LAUNCH_FILES}.items():
        (tmp_path / name).write_text(text)
    for name in ("notes.h5", "notes.pt", "notes.npz", "scan.nii.gz"):   # named like data, weights, models, CT; text
        (tmp_path / name).write_text("to be made\n")
    _write_small_pairs(tmp_path / "pairs.h5")
    return tmp_path


def _write_small_pairs(path):
    """Two vertebrae of paired data with the shipped model's point counts (random points: only the file
    format matters here)."""
    from types import SimpleNamespace

    import numpy as np

    from usx_stream.train.data import write_pairs

    rng = np.random.default_rng(0)
    samples = [SimpleNamespace(level=lv, partial=rng.normal(size=(1024, 3)) * 0.3,
                               labelmap=rng.normal(size=(256, 3)) * 0.3, complete=rng.normal(size=(2048, 3)) * 0.3,
                               name=f"v{k}", center_mm=np.zeros(3))
               for k, lv in enumerate(("L1", "L2"))]
    write_pairs(path, samples, mm_per_unit=50.0)


def _replay(seq: str, *extra: str) -> list[str]:
    return ["replay", seq, "--port", "0", "--rate", "0", "--no-wait", *extra]  # fails fast if a check is missing


def _compound(seq: str, config: str) -> list[str]:
    return ["compound", "--config", config, "--seq", seq, "--out", "volume.mha"]


CASES = [
    # id, arguments, what the line must name
    ("run-unknown-key", ["run", "--launch", "unknown_key.toml"], ["unknown_key.toml", "spacing_mn"]),
    ("run-wrong-type", ["run", "--launch", "wrong_type.toml"], ["wrong_type.toml", "compound.spacing_mm", "'fine'"]),
    ("run-bad-toml", ["run", "--launch", "bad.toml"], ["bad.toml", "line 1"]),
    ("run-missing-launch", ["run", "--launch", "missing.toml"], ["missing.toml"]),
    ("replay-missing-seq", _replay("missing.igs.mha"), ["missing.igs.mha", "not found"]),
    ("replay-truncated", _replay("truncated.igs.mha"), ["truncated.igs.mha", "pixel data ends", "Seq_Frame0004"]),
    ("replay-truncated-zlib", _replay("truncated_zlib.igs.mha"), ["truncated_zlib.igs.mha", "Seq_Frame"]),
    ("replay-no-coordinates", _replay("good.igs.mha", "--config", "no_coordinates.xml"),
     ["no_coordinates.xml", "CoordinateDefinitions"]),
    ("replay-no-image-to-probe", _replay("good.igs.mha", "--config", "no_image_to_probe.xml"),
     ["no_image_to_probe.xml", "good.igs.mha", "ImageToReference", "ImageToProbe"]),
    ("replay-no-matrix", _replay("good.igs.mha", "--config", "no_matrix.xml"),
     ["no_matrix.xml", "From='Image' To='Probe'", "Matrix"]),
    ("replay-matrix-15", _replay("good.igs.mha", "--config", "matrix_15.xml"),
     ["matrix_15.xml", "From='Image' To='Probe'", "Matrix=", "got 15"]),
    ("replay-truncated-xml", _replay("good.igs.mha", "--config", "truncated.xml"),
     ["truncated.xml", "malformed XML", "line 10, column"]),
    ("compound-missing-config", _compound("good.igs.mha", "missing.xml"), ["missing.xml", "No such file"]),
    ("compound-truncated", _compound("truncated.igs.mha", "good.xml"), ["truncated.igs.mha", "Seq_Frame0004"]),
    ("compound-truncated-zlib", _compound("truncated_zlib.igs.mha", "good.xml"), ["truncated_zlib.igs.mha", "Seq_Frame"]),
    ("compound-no-coordinates", _compound("good.igs.mha", "no_coordinates.xml"),
     ["no_coordinates.xml", "good.igs.mha", "ImageToReference"]),
    ("compound-no-image-to-probe", _compound("good.igs.mha", "no_image_to_probe.xml"),
     ["no_image_to_probe.xml", "ImageToReference", "PhantomToReference"]),
    ("compound-no-matrix", _compound("good.igs.mha", "no_matrix.xml"), ["no_matrix.xml", "Matrix"]),
    ("compound-matrix-15", _compound("good.igs.mha", "matrix_15.xml"), ["matrix_15.xml", "got 15"]),
    ("compound-no-volume-reconstruction", _compound("good.igs.mha", "no_volume_reconstruction.xml"),
     ["no_volume_reconstruction.xml", "VolumeReconstruction"]),
    ("compound-truncated-xml", _compound("good.igs.mha", "truncated.xml"), ["truncated.xml", "line 10, column"]),
    ("error-head-missing-data", ["error-head", "check", "--model", "default", "--data", "missing.h5"],
     ["data file", "missing.h5", "not found"]),
    ("error-head-not-hdf5", ["error-head", "check", "--model", "default", "--data", "notes.h5"],
     ["data file", "notes.h5", "not a readable HDF5 file"]),
    ("merge-not-hdf5", ["dataset", "--merge", "merged.h5", "notes.h5"], ["--merge", "notes.h5", "not a readable HDF5"]),
    ("eval-data-not-hdf5", ["eval", "--data", "notes.h5", "--model", "default", "--json", "e.json"],
     ["data file", "notes.h5", "not a readable HDF5 file"]),
    ("eval-model-not-a-checkpoint", ["eval", "--data", "pairs.h5", "--model", "notes.pt", "--json", "e.json"],
     ["notes.pt", "not a readable completion checkpoint"]),
    ("eval-fit-compare-alone", ["eval", "--data", "pairs.h5", "--fit-compare", "--json", "e.json"],
     ["--fit-compare", "--compare"]),
    ("train-data-not-hdf5", ["train", "--data", "notes.h5", "--val", "notes.h5", "--out", "run", "--epochs", "1"],
     ["data file", "notes.h5", "not a readable HDF5 file"]),
    ("export-model-not-a-checkpoint", ["export", "--model", "notes.pt"], ["notes.pt", "not a readable completion"]),
    ("simulate-fewer-frames-than-passes", ["simulate", "--out", "s", "--frames", "2"],
     ["--frames", "one frame per pass", "got 2"]),
    ("dataset-spine-without-meshes", ["dataset", "--out", "d.h5", "--node-sessions", "1", "--spine", "."],
     ["--spine", "no mesh named L1..L5"]),
    ("error-head-missing-model", ["error-head", "check", "--model", "missing.pt", "--data", "pairs.h5"],
     ["--model", "not a checkpoint file", "missing.pt"]),
    ("error-head-not-a-head", ["error-head", "check", "--model", "default", "--head", "notes.pt", "--data", "pairs.h5"],
     ["--head", "notes.pt", "not a readable error head"]),
    ("simulate-not-a-shape-model", ["simulate", "--spine", "ssm:notes.npz", "--out", "session"],
     ["notes.npz", "not a readable shape model", "not an .npz archive"]),
    ("shape-model-sample-not-a-model", ["shape-model", "sample", "--model", "notes.npz", "--out", "spines"],
     ["notes.npz", "not a readable shape model"]),
    ("shape-model-build-missing-data", ["shape-model", "build", "--data", "missing", "--out", "ssm.npz"],
     ["--data", "no such folder", "missing"]),
    ("shape-model-build-no-vertebra", ["shape-model", "build", "--data", ".", "--out", "ssm.npz"],
     ["no real vertebra found"]),
    ("shape-model-build-missing-labelmap", ["shape-model", "build", "--data", ".", "--out", "ssm.npz", "--labelmap",
                                            "s9=missing.nii.gz"], ["--labelmap", "'s9'", "no such file", "missing.nii.gz"]),
    ("segment-ct-not-nifti", ["shape-model", "segment-ct", "--ct", "scan.nii.gz", "--atlas", "scan.nii.gz",
                              *[f"--seed={lv}=1,1,{k}" for k, lv in enumerate(SEED_LEVELS)], "--out", "labels.nii.gz"],
     ["scan.nii.gz", "not a readable .nii.gz"]),
]


@pytest.mark.parametrize("args, names", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_exit_2(inputs, args, names):
    done = run_cli(*args, cwd=inputs)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"usx-stream {args[0]}: error: ")
    for name in names:
        assert name in lines[0]
    assert not (inputs / "volume.mha").exists() and not (inputs / "e.json").exists()
    assert not list(inputs.glob("run/*.pt"))   # a training run's folder keeps only its log, which says why


@pytest.mark.parametrize("args, named", [
    (["run", "--launch", "unknown_key.toml", "--duration", "-1"], "argument --duration: must be > 0"),
    (_replay("good.igs.mha", "--port", "70000"), "argument --port: expected a port 0..65535, got '70000'"),
    (_replay("good.igs.mha", "--speed", "0"), "argument --speed: must be > 0"),
    (["listen", "--port", "0"], "argument --port: expected a port 1..65535, got '0'"),
    (["listen", "--duration", "-3"], "argument --duration: must be >= 0"),
    (["listen", "--count", "-1"], "argument --count: must be >= 0"),
    (["eval", "--data", "pairs.h5", "--json", "e.json", "--limit", "-1"], "argument --limit: must be >= 0"),
    (["error-head", "check", "--data", "pairs.h5", "--latent", "-2"], "argument --latent: must be >= 0"),
    (["error-head", "fit", "--data", "pairs.h5", "--val", "pairs.h5", "--out", "h.pt", "--epochs", "0"],
     "argument --epochs: must be > 0"),
    (["shape-model", "sample", "--model", "notes.npz", "--out", "spines", "--sd", "-1"], "argument --sd: must be > 0"),
    (["simulate", "--out", "s", "--scale", "-1"], "argument --scale: must be > 0"),
    (["simulate", "--out", "s", "--variation", "-1"], "argument --variation: must be in [0, 3], got '-1'"),
    (["demo", "--out", "d", "--frames", "2"], "argument --frames: must be >= 3"),
    (_compound("good.igs.mha", "good.xml") + ["--threads", "-2"], "argument --threads: must be > 0"),
    (["shape-model", "build", "--data", ".", "--out", "m.npz", "--variance", "2"],
     "argument --variance: must be in (0, 1], got '2'"),
    (["export", "--batch", "0"], "argument --batch: must be > 0, got '0'"),
], ids=["run-duration", "replay-port", "replay-speed", "listen-port-0", "listen-duration", "listen-count",
        "eval-limit", "error-head-latent", "error-head-epochs", "shape-model-sd", "simulate-scale",
        "simulate-variation", "demo-frames", "compound-threads", "shape-model-variance", "export-batch"])
def test_an_option_out_of_range_is_a_usage_error_naming_it(inputs, args, named):
    """Checked by the parser before anything runs: usage, then the one line naming the option."""
    done = run_cli(*args, cwd=inputs)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    command = " ".join(args[:2]) if args[0] in ("error-head", "shape-model") else args[0]
    assert done.stderr.strip().splitlines()[-1].startswith(f"usx-stream {command}: error: {named}"), done.stderr


def test_the_same_inputs_without_their_defect_succeed(inputs):
    """The files above fail only because of their defect."""
    done = run_cli(*_compound("good.igs.mha", "good.xml"), cwd=inputs)
    assert done.returncode == 0, done.stderr
    assert (inputs / "volume.mha").exists() and f"{N_FRAMES} of {N_FRAMES} frames pasted" in done.stdout
    done = run_cli(*_replay("good.igs.mha", "--config", "good.xml"), cwd=inputs)
    assert done.returncode == 0, done.stderr
    assert f"sent {N_FRAMES} frames" in done.stdout


def test_vv_shows_the_traceback_of_an_input_error(tmp_path, capsys):
    assert cli.main(["-vv", "run", "--launch", str(tmp_path / "missing.toml")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "ConfigError" in err
    assert err.rstrip().splitlines()[-1].startswith("usx-stream run: error: launch file ")


@pytest.mark.parametrize("bug", [RuntimeError("boom"), ValueError("a plain ValueError is a bug"),
                                 ConnectionResetError(104, "reset by peer")])
def test_a_bug_keeps_its_traceback(monkeypatch, bug):
    """Only InputError and unopenable input paths are reported as bad input."""
    import usx_stream.commands.listen as listen

    def run(args):
        raise bug

    monkeypatch.setattr(listen, "run", run)
    with pytest.raises(type(bug)):
        cli.main(["listen"])


def test_input_error_is_a_value_error_and_config_error_is_one():
    from usx_stream.node.launch import ConfigError

    assert issubclass(InputError, ValueError) and issubclass(ConfigError, InputError)


def test_every_listed_subcommand_has_a_module():
    assert "bench" not in cli.SUBCOMMANDS
    for name, (module, _) in cli.SUBCOMMANDS.items():
        assert importlib.util.find_spec(module) is not None, name


def test_ctrl_c_is_one_line_exit_130_and_writes_nothing(tmp_path):
    """dataset's worker processes ignore Ctrl-C and the parent alone stops: no traceback from anyone."""
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "pairs.h5"
    proc = subprocess.Popen([sys.executable, "-m", "usx_stream.cli", "dataset", "--out", str(out), "--procedural",
                             "40", "--workers", "2", "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    time.sleep(4.0)  # the workers are up and generating (40 spines take a minute); nothing signals it
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == cli.EXIT_INTERRUPTED == 130, err
    assert err.strip().splitlines() == ["usx-stream dataset: interrupted"], err
    assert not out.exists() and not list(tmp_path.iterdir())
