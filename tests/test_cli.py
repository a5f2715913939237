"""The command line: success paths and one-line errors with exit code 2 that write nothing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import TINY_CLASSIFIER, parse

from onnxopt.cli import main



@pytest.fixture
def model_path(tmp_path: Path) -> Path:
    path = tmp_path / "m.onnx"
    onnx.save(parse(TINY_CLASSIFIER), str(path))
    return path


@pytest.fixture
def data_path(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    path = tmp_path / "data.npz"
    np.savez(path, input=rng.standard_normal((40, 4)).astype(np.float32), label=rng.integers(0, 4, 40))
    return path


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_optimize_writes_model_and_json_report(tmp_path: Path, model_path: Path, data_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    out_path = tmp_path / "out.onnx"
    code, out, err = _run(capsys, "optimize", str(model_path), "-o", str(out_path), "--pass", "eliminate-identity",
                          "--eval", str(data_path), "--json", "--latency-runs", "5")
    assert code == 0, err
    report = json.loads(out)
    assert report["passes"][0]["pass_name"] == "eliminate-identity"
    assert report["passes"][0]["nodes_removed"] == 1
    assert report["comparison"]["agreement"] == 1.0
    assert report["before"]["op_histogram"]["Identity"] == 1 and "Identity" not in report["after"]["op_histogram"]
    onnx.checker.check_model(onnx.load(str(out_path)), full_check=True)


def test_compare_model_with_itself(model_path: Path, data_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(capsys, "compare", str(model_path), str(model_path), "--data", str(data_path), "--json",
                          "--latency-runs", "20")
    assert code == 0, err
    result = json.loads(out)
    assert result["agreement"] == 1.0
    assert 0.5 < result["latency"]["ratio"] < 2.0


def test_compare_ignores_npz_arrays_that_are_not_inputs(tmp_path: Path, model_path: Path, data_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    # setup: an evaluation set that also carries file names and captions
    with np.load(data_path) as npz:
        arrays = dict(npz)
    extra = tmp_path / "eval.npz"
    np.savez(extra, **arrays, file_name=np.array([f"{i}.png" for i in range(40)]), caption=np.array(["a cat"] * 40))
    # execute
    code, out, err = _run(capsys, "compare", str(model_path), str(model_path), "--data", str(extra), "--json",
                          "--latency-runs", "0")
    # assert: measured on the inputs and labels, and the ignored arrays are named once
    assert code == 0, err
    result = json.loads(out)
    assert result["data"] == "eval.npz (40 samples, npz; ignored arrays file_name, caption)"
    assert result["labelled_samples"] == 40 and result["agreement"] == 1.0


def test_inspect_and_passes(model_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "inspect", str(model_path), "--json")
    assert code == 0
    info = json.loads(out)
    assert info["stats"]["op_histogram"] == {"Constant": 1, "Identity": 1, "MatMul": 1, "Relu": 1}
    assert {p["name"]: p["status"] for p in info["passes"]}["eliminate-identity"] == "would change"
    code, out, _ = _run(capsys, "passes")
    assert code == 0 and "fold-batchnorm" in out
    code, out, _ = _run(capsys, "passes", "--json")
    entries = {p["name"]: p for p in json.loads(out)}
    assert code == 0
    assert (entries["int8"]["calibration"], entries["prune-channels"]["calibration"],
            entries["cleanup"]["calibration"]) == ("needed", "optional", "none")
    assert {"name": "method", "type_name": "minmax|percentile|entropy|mse", "default": "minmax"} \
        .items() <= next(s for s in entries["int8"]["settings"] if s["name"] == "method").items()


def test_no_eval_writes_the_model_without_a_comparison(tmp_path: Path, model_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    out_path = tmp_path / "out.onnx"
    code, out, err = _run(capsys, "optimize", str(model_path), "-o", str(out_path), "--pass", "eliminate-identity",
                          "--no-eval", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["comparison"] is None
    assert report["output"] == str(out_path.resolve()) or report["output"] == str(out_path)
    onnx.checker.check_model(onnx.load(str(out_path)), full_check=True)


@pytest.mark.parametrize("option", ["--threads=0", "--batch-size=0", "--latency-runs=-1", "--threads=x"])
def test_measurement_options_are_validated(option: str, model_path: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["optimize", str(model_path), "-o", str(tmp_path / "o.onnx"), "--pass", "cleanup", option])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "minimum" in err or "not an integer" in err
    assert not (tmp_path / "o.onnx").exists()


def test_report_is_written_atomically_next_to_the_model(tmp_path: Path, model_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    report = tmp_path / "report.json"
    code, _, err = _run(capsys, "optimize", str(model_path), "-o", str(tmp_path / "o.onnx"), "--pass", "cleanup",
                        "--no-eval", "--report", str(report))
    assert code == 0, err
    assert json.loads(report.read_text())["passes"][0]["pass_name"] == "cleanup"
    assert not list(tmp_path.glob(".onnxopt-*"))


def _bad_npz(tmp_path: Path, **arrays: np.ndarray) -> str:
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    return str(path)


@pytest.mark.parametrize(
    ("case", "match"),
    [
        ("missing", "no such file"),
        ("not_onnx", "not an ONNX model|cannot be read|invalid ONNX"),
        ("truncated", "not an ONNX model|cannot be read|invalid ONNX"),
        ("same_output", "overwrite the input"),
        ("bad_name", "missing input"),
        ("bad_shape", "shape"),
        ("bad_dtype", "dtype"),
        ("empty", "empty"),
        ("unknown_pass", "unknown pass"),
        ("bad_calib", "shape"),
        ("report_over_input", "model path"),
        ("report_missing_folder", "does not exist"),
        ("missing_provider", "not available"),
        ("eval_and_no_eval", "contradict"),
    ],
)
def test_bad_input_exits_2_and_writes_nothing(case: str, match: str, tmp_path: Path, model_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    # setup
    src = model_path
    out = tmp_path / "out.onnx"
    args = ["--pass", "eliminate-identity"]
    data = None
    if case == "missing":
        src = tmp_path / "nope.onnx"
    elif case == "not_onnx":
        src = tmp_path / "text.onnx"
        src.write_text("hello, world\n" * 10)
    elif case == "truncated":
        src = tmp_path / "trunc.onnx"
        src.write_bytes(model_path.read_bytes()[:40])
    elif case == "same_output":
        out = model_path
    elif case == "bad_name":
        data = _bad_npz(tmp_path, x=np.zeros((2, 4), np.float32))
    elif case == "bad_shape":
        data = _bad_npz(tmp_path, input=np.zeros((2, 5), np.float32))
    elif case == "bad_dtype":
        data = _bad_npz(tmp_path, input=np.zeros((2, 4), np.float64))
    elif case == "empty":
        data = _bad_npz(tmp_path, input=np.zeros((0, 4), np.float32))
    elif case == "unknown_pass":
        args = ["--pass", "frobnicate"]
    elif case == "bad_calib":
        args += ["--calib", _bad_npz(tmp_path, input=np.zeros((2, 4, 1), np.float32))]
    elif case == "report_over_input":
        args += ["--report", str(model_path)]
    elif case == "report_missing_folder":
        args += ["--report", str(tmp_path / "nope" / "r.json")]
    elif case == "missing_provider":
        args += ["--provider", "NoSuchExecutionProvider"]
    elif case == "eval_and_no_eval":
        args += ["--no-eval", "--eval", "random"]
    before = model_path.read_bytes()
    if data is not None:
        args += ["--eval", data]
    # execute
    code, _, err = _run(capsys, "optimize", str(src), "-o", str(out), *args, "--latency-runs", "2", "--no-progress")
    # assert
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("onnxopt: error:"), err
    assert pytest.importorskip("re").search(match, lines[0]), lines[0]
    assert model_path.read_bytes() == before
    assert not (tmp_path / "out.onnx").exists() or case == "same_output"


def test_console_script_exit_code(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "onnxopt.cli", "inspect", str(tmp_path / "missing.onnx")],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "no such file" in proc.stderr


def test_unpack_of_a_model_without_packed_weights_says_so(tmp_path: Path, model_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "plain.onnx"
    code, stdout, err = _run(capsys, "unpack", str(model_path), "-o", str(out))
    assert code == 0, err
    assert "no bit-packed weights" in err and str(out) in stdout


def test_image_mean_std_without_scale_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # setup: an image model and a folder of one image
    from PIL import Image

    model = tmp_path / "img.onnx"
    onnx.save(parse("""<ir_version: 8, opset_import: ["" : 17]>
        agraph (float[N, 3, 4, 4] x) => (float[N, 3, 4, 4] y) { y = Relu(x) }"""), str(model))
    (tmp_path / "images").mkdir()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "images" / "a.png")
    # execute
    code, _, err = _run(capsys, "optimize", str(model), "-o", str(tmp_path / "out.onnx"), "--pass", "cleanup",
                        "--eval", str(tmp_path / "images"), "--preprocess", "mean=127,std=128")
    # assert
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and not (tmp_path / "out.onnx").exists()
    assert lines[0].startswith("onnxopt: error: preprocess mean=127,std=128 without scale: for input 'x' "
                               "[N, 3, 4, 4] the default scale is 1/255 (mean/std in [0, 1] units)")


def test_progress_off_a_terminal_is_one_line_per_step(tmp_path: Path, model_path: Path, data_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(capsys, "optimize", str(model_path), "-o", str(tmp_path / "out.onnx"), "--pass", "cleanup",
                        "--eval", str(data_path), "--latency-runs", "4")
    assert code == 0
    assert [line.split(" in ")[0] for line in err.splitlines()] == ["onnxopt: comparing: 40 samples",
                                                                   "onnxopt: latency: 4 runs"]
