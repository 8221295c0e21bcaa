"""The `fastpaper` command: `info` and `demo --small`, in-process and via the console script."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from fastpaper import cli


def _console_script() -> str:
    # The script pip installed next to this interpreter, not whichever `fastpaper` is first on PATH.
    name = "fastpaper.exe" if os.name == "nt" else "fastpaper"
    for folder in (sysconfig.get_path("scripts"), str(Path(sys.executable).parent)):
        path = Path(folder) / name
        if path.is_file():
            return str(path)
    found = shutil.which(name)
    if found is None:
        pytest.fail("the fastpaper console script is not installed (pip install .)")
    return found


def _run(*args: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, **(env_extra or {}))
    return subprocess.run([_console_script(), *args], capture_output=True, text=True, timeout=120,
                          env=env)


def _check_info(data: dict) -> None:
    import fastpaper

    assert data["version"] == fastpaper.__version__
    assert isinstance(data["cuda_built"], bool)
    assert isinstance(data["cuda_devices"], list)


def test_info_json_console_script():
    proc = _run("info", "--json")
    assert proc.returncode == 0, proc.stderr
    _check_info(json.loads(proc.stdout))


def test_info_json_in_process(capsys):
    assert cli.main(["info", "--json"]) == 0
    _check_info(json.loads(capsys.readouterr().out))


def test_info_text(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert "version" in out and "cuda_built" in out
    with pytest.raises(json.JSONDecodeError):
        json.loads(out)


def test_no_command_prints_help(capsys):
    assert cli.main([]) == 2
    assert "info" in capsys.readouterr().out


def test_unknown_command_exits_with_usage():
    with pytest.raises(SystemExit) as exc:
        cli.main(["frobnicate"])
    assert exc.value.code == 2


requires_torch = pytest.mark.skipif(importlib.util.find_spec("torch") is None,
                                    reason="fastpaper demo needs torch")
_DEMO_SECTIONS = ("== BFP codec", "accuracy and size:", "throughput: fastpaper vs plain PyTorch",
                  "BFP12", "BFP16", "MXINT8", "bit-identical to fastpaper here",
                  "== krylov: GCRO-DR with subspace recycling", "GCRO-DR(40,20) recycled + sorted",
                  "fused multi-head LSTM / GRU / sLSTM", "forward: fastpaper.nn vs torch.nn")


@requires_torch
def test_demo_small_in_process(capsys, tmp_path):
    out_json = tmp_path / "demo.json"
    assert cli.main(["demo", "--small", "--device", "cpu", "--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    for text in _DEMO_SECTIONS:
        assert text in out, text
    data = json.loads(out_json.read_text())
    assert data["config"] == {"device": "cpu", "small": True, "seed": 0}
    names = [s["name"] for s in data["sections"]]
    assert names[0] == "bfp" and {"krylov", "pararnn", "rnn", "moe"} <= set(names)
    section = next(s for s in data["sections"] if s["name"] == "bfp")
    accuracy, speed = section["tables"]
    by_format = {r["format"]: r for r in accuracy["rows"]}
    assert set(by_format) == {"BFP12", "BFP16", "MXINT8"}
    assert by_format["BFP12"]["bits_per_element"] == pytest.approx(4 + 8 / 64)
    assert by_format["MXINT8"]["bits_per_element"] == pytest.approx(8 + 8 / 32)
    # more mantissa bits, less error; every format well below the scale of the data
    assert by_format["BFP16"]["rel_error"] < by_format["BFP12"]["rel_error"] < 0.5
    assert all(r["baseline_bit_identical"] for r in accuracy["rows"])
    assert {(r["format"], r["op"]) for r in speed["rows"]} == {
        (f, op) for f in by_format for op in ("pack", "unpack")}
    assert all(r["fastpaper_ms"] > 0 and r["torch_ms"] > 0 for r in speed["rows"])
    (krylov_table,) = next(s for s in data["sections"] if s["name"] == "krylov")["tables"]
    by_method = {r["method"]: r for r in krylov_table["rows"]}
    assert all(r["converged"] == "6/6" for r in by_method.values())
    assert (by_method["GCRO-DR(40,20) recycled"]["matvecs"]
            < by_method["GCRO-DR(40,20) fresh"]["matvecs"] < by_method["GMRES(40)"]["matvecs"])
    (rnn_table,) = next(s for s in data["sections"] if s["name"] == "rnn")["tables"]
    assert [r["module"] for r in rnn_table["rows"]] == ["LSTM 1x64", "GRU 1x64", "SLSTM 4x16"]
    # torch.nn's weights loaded: same outputs; sLSTM step() == full sequence
    assert all(r["max_abs_diff"] < 1e-5 and r["fastpaper_ms"] > 0 for r in rnn_table["rows"])


@requires_torch
def test_demo_small_console_script_env():
    # The environment variable is the switch scripts and CI can set without changing arguments.
    proc = _run("demo", "--device", "cpu", env_extra={"FASTPAPER_DEMO_SMALL": "1"})
    assert proc.returncode == 0, proc.stderr
    assert "(small sizes)" in proc.stdout
    for text in _DEMO_SECTIONS:
        assert text in proc.stdout, text


def test_demo_section_choices_are_the_demo_sections():
    # cli lists them statically (no torch import for --help); they must not drift apart
    import argparse

    from fastpaper import demo

    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    section = next(a for a in sub.choices["demo"]._actions if "--section" in a.option_strings)
    assert list(section.choices) == [name for name, _ in demo.SECTIONS]


def test_demo_unknown_section():
    with pytest.raises(SystemExit):
        cli.main(["demo", "--small", "--section", "nope"])


@requires_torch
def test_moe_train_cli(capsys, tmp_path):
    ckpt = tmp_path / "m3vit.pt"
    assert cli.main(["moe", "train", "--steps", "3", "--size", "16", "--scenes", "8", "--batch",
                     "4", "--no-progress", "--out", str(ckpt)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out["held_out_after"]) == {"semseg", "depth"} and out["steps"] == 3
    assert 0 < out["flops_reduction"] < 1
    from fastpaper.models import M3ViT

    assert M3ViT.from_checkpoint(ckpt).tasks == ["semseg", "depth"]
    assert cli.main(["moe", "train", "--tasks", "pose", "--no-progress"]) == 2


def test_hls_estimate_console_script():
    proc = _run("hls", "estimate", "--json", "--tokens", "197")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["config"]["n_tokens"] == 197
    assert data["reordered"]["cycles_per_layer"] < data["token_by_token"]["cycles_per_layer"]


def test_hls_estimate_bad_sizes(capsys):
    assert cli.main(["hls", "estimate", "--dim", "100"]) == 2
    assert "multiple of" in capsys.readouterr().err
