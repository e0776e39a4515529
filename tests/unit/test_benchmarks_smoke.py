"""The benchmark suite's plumbing, without timing anything: competitor envs, runner JSON, the table."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from benchmarks import envs
from benchmarks.common import Row, skipped, table


def test_pip_commands_pin_the_seed_without_deps_and_install_sae_lens_with_them(tmp_path: Path) -> None:
    py = tmp_path / "bin" / "python"
    seed = envs.pip_command(py, envs.COMPETITORS["mi-crow"])
    assert seed[:4] == [str(py), "-m", "pip", "install"]
    assert "--no-deps" in seed and seed[-1] == "mi-crow==1.0.0.post10"
    lens = envs.pip_command(py, envs.COMPETITORS["sae-lens"])
    assert "--no-deps" not in lens and lens[-1] == "sae-lens"
    assert set(envs.COMPETITORS) == {"sae-lens", "mi-crow", "overcomplete"}


def test_the_pth_points_at_the_main_venv(tmp_path: Path) -> None:
    envs.write_pth(tmp_path)
    pth = envs.env_site_packages(tmp_path) / envs.PTH_NAME
    assert pth.read_text().strip() == envs.main_site_packages()
    assert (Path(envs.main_site_packages()) / "torch").is_dir()


def test_a_cached_install_is_reused_without_pip(tmp_path: Path) -> None:
    env = envs.env_dir("mi-crow", tmp_path)
    (env / "bin").mkdir(parents=True)
    (env / "bin" / "python").symlink_to(sys.executable)
    marker = {"key": envs.marker_payload(envs.COMPETITORS["mi-crow"]), "versions": {"mi-crow": "1.0.0.post10"}}
    (env / envs.MARKER).write_text(json.dumps(marker))
    state = envs.ensure("mi-crow", root=tmp_path, timeout=1)  # a pip run could not finish in 1 s
    assert state.ok and state.versions == {"mi-crow": "1.0.0.post10"}
    assert (envs.env_site_packages(env) / envs.PTH_NAME).is_file()


def test_parse_json_line_takes_the_last_object_after_banners() -> None:
    out = 'Loading weights: 100%\n{"a": 1}\nnoise {not json}\n{"side": "seed", "seconds": 1.5}\n'
    assert envs.parse_json_line(out) == {"side": "seed", "seconds": 1.5}
    assert envs.parse_json_line("no json here\n[1, 2]\n") is None


def test_run_json_returns_the_result_or_the_error_line(tmp_path: Path) -> None:
    good = tmp_path / "good.py"
    good.write_text('import json, sys\nprint("banner")\nprint(json.dumps({"vectors_per_s": float(sys.argv[1])}))\n')
    assert envs.run_json(sys.executable, good, ["12.5"], timeout=60) == {"vectors_per_s": 12.5}
    bad = tmp_path / "bad.py"
    bad.write_text("raise SystemExit(\"error: no layer ending in 'h_9'\")\n")
    with pytest.raises(RuntimeError, match="no layer ending"):
        envs.run_json(sys.executable, bad, [], timeout=60)


def test_table_marks_pass_fail_skipped_and_lower_is_better_rows() -> None:
    rows = [
        Row("harvest", "tok/s", 2000.0, 1000.0, 0.95),
        Row("sae-train-vs-seed", "vec/s", 100.0, 200.0, 2.0),
        Row("memory-harvest", "MB", 30.0, 25.0, 2.0, lower_is_better=True),
        skipped("sae-train-vs-sae-lens", 2.0, "not installable: pip failed"),
    ]
    lines = table(rows)
    assert lines[2].endswith("| 2.000 | >= 0.95 | yes |")
    assert lines[3].endswith("| 0.500 | >= 2.00 | NO |")
    assert lines[4].endswith("| 1.200 | <= 2.00 | yes |")
    assert lines[5] == "| sae-train-vs-sae-lens | - | - | - | >= 2.00 | not installable: pip failed |"
