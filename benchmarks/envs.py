"""Competitor environments: one venv per competitor under ``.bench/envs/<name>``, installed by the suite itself.

Each venv is created from the base interpreter and gets a ``zz_main_venv.pth`` naming the main venv's
site-packages, so torch / transformers / numpy come from there instead of a multi-GB re-download. pip then
counts them as installed; a package the competitor pins differently is installed into its own env, which
comes first on ``sys.path`` and shadows ours. The .pth does not run the main venv's editable-install
finder, so our ``mi_crow`` is not importable there: in the seed's env ``import mi_crow`` is the seed.

    .venv/bin/python -m benchmarks.envs [name ...]      # install (cached) and print each env's state
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import sysconfig
import venv
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENVS_DIR = ROOT / ".bench" / "envs"
MARKER = "installed.json"
PTH_NAME = "zz_main_venv.pth"


@dataclass(frozen=True)
class Competitor:
    name: str
    requirements: tuple[str, ...]  # what pip installs, pinned where the benchmark depends on one version
    no_deps: bool = False  # install the package alone; its imports are satisfied by the main venv
    probe: str = ""  # a python statement that must run in the env once installed
    pip_args: tuple[str, ...] = field(default_factory=tuple)


COMPETITORS: dict[str, Competitor] = {
    c.name: c
    for c in (
        Competitor("sae-lens", ("sae-lens",), probe="import sae_lens"),
        # pip would see our own editable mi-crow dist-info through the .pth and install nothing; the seed's
        # code imports only packages the main venv has (torch, transformers, datasets, safetensors, numpy,
        # overcomplete).
        Competitor("mi-crow", ("mi-crow==1.0.0.post10",), no_deps=True, probe="import mi_crow"),
        Competitor("overcomplete", ("overcomplete",), probe="import overcomplete.sae"),
    )
}


@dataclass
class EnvState:
    name: str
    python: Path | None  # the env's interpreter when usable
    error: str = ""  # why the competitor is not installable, when it is not
    versions: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.python is not None and not self.error


def env_dir(name: str, root: Path = ENVS_DIR) -> Path:
    return root / name


def env_python(path: Path) -> Path:
    return path / "bin" / "python"


def main_site_packages() -> str:
    """The site-packages of the interpreter running the suite (the main venv)."""
    return sysconfig.get_paths()["purelib"]


def env_site_packages(path: Path) -> Path:
    ver = f"python{sys.version_info.major}.{sys.version_info.minor}"
    return path / "lib" / ver / "site-packages"


def write_pth(path: Path) -> None:
    """Make the main venv's packages (torch, transformers, ...) importable in env ``path``, after its own."""
    site = env_site_packages(path)
    site.mkdir(parents=True, exist_ok=True)
    (site / PTH_NAME).write_text(main_site_packages() + "\n", encoding="utf-8")


def pip_command(python: Path, comp: Competitor) -> list[str]:
    cmd = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-input"]
    cmd += ["--retries", "1", "--timeout", "30"]  # offline (e.g. a GPU box): fail in seconds, not minutes
    if comp.no_deps:
        cmd.append("--no-deps")
    return [*cmd, *comp.pip_args, *comp.requirements]


def marker_payload(comp: Competitor) -> dict[str, object]:
    """What a cached install must match: change a pin and the env is reinstalled."""
    return {"requirements": list(comp.requirements), "no_deps": comp.no_deps}


def _run(cmd: list[str], timeout: float, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    # cwd outside the repository: with ``-c`` the cwd comes first on sys.path, and ours would shadow the seed.
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False, cwd=cwd or Path("/"))


def _short(text: str, limit: int = 160) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error" in ln.lower()]
    msg = (errors or lines or ["no output"])[-1]
    return msg if len(msg) <= limit else msg[: limit - 3] + "..."


def installed_versions(python: Path) -> dict[str, str]:
    code = (
        "import importlib.metadata as m, json\n"
        "out = {}\n"
        f"for d in {list(_DISTS)!r}:\n"
        "    try: out[d] = m.version(d)\n"
        "    except m.PackageNotFoundError: pass\n"
        "print(json.dumps(out))"
    )
    res = _run([str(python), "-c", code], 120)
    return json.loads(res.stdout) if res.returncode == 0 and res.stdout.strip() else {}


_DISTS = ("sae-lens", "transformer-lens", "mi-crow", "overcomplete", "torch", "transformers")


def ensure(name: str, root: Path = ENVS_DIR, timeout: float = 900) -> EnvState:
    """Create and install competitor ``name`` unless a marker says the same pins are installed."""
    comp = COMPETITORS[name]
    path = env_dir(name, root)
    python = env_python(path)
    marker = path / MARKER
    want = marker_payload(comp)
    if marker.is_file() and python.exists():
        with contextlib.suppress(ValueError, OSError):
            got = json.loads(marker.read_text())
            if got.get("key") == want:
                write_pth(path)  # the main venv may have moved (a copied checkout): point at today's
                return EnvState(name, python, versions=got.get("versions", {}))
    try:
        if not python.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            # From the base interpreter, not from our venv: sys.executable here would be the venv's python.
            builder = venv.EnvBuilder(with_pip=True, clear=True)
            builder.create(path)
        write_pth(path)
        res = _run(pip_command(python, comp), timeout)
        if res.returncode != 0:
            return EnvState(name, None, f"pip failed: {_short(res.stderr or res.stdout)}")
        if comp.probe:
            res = _run([str(python), "-c", comp.probe], 300)
            if res.returncode != 0:
                return EnvState(name, None, f"import failed: {_short(res.stderr)}")
    except subprocess.TimeoutExpired as exc:
        return EnvState(name, None, f"install timed out after {exc.timeout:.0f}s")
    except OSError as exc:
        return EnvState(name, None, f"{type(exc).__name__}: {exc}")
    versions = installed_versions(python)
    marker.write_text(json.dumps({"key": want, "versions": versions}, indent=1), encoding="utf-8")
    return EnvState(name, python, versions=versions)


def run_json(
    python: Path | str,
    script: Path,
    args: list[str],
    timeout: float = 1800,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> dict:
    """Run a runner script with ``python`` and return the last JSON line it printed.

    Raises RuntimeError with the script's last error line when it fails or prints no JSON.
    """
    res = subprocess.run(
        [str(python), str(script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=env,
        cwd=cwd or Path("/"),
    )
    parsed = parse_json_line(res.stdout)
    if res.returncode != 0 or parsed is None:
        raise RuntimeError(f"{script.name} exited {res.returncode}: {_short(res.stderr or res.stdout, 300)}")
    return parsed


def parse_json_line(stdout: str) -> dict | None:
    """The last line of ``stdout`` that is a JSON object (libraries may print banners before it)."""
    for line in reversed(stdout.strip().splitlines()):
        line = line.strip()
        if line.startswith("{") and line.endswith("}"):
            try:
                value = json.loads(line)
            except ValueError:
                continue
            if isinstance(value, dict):
                return value
    return None


def main(argv: list[str] | None = None) -> None:
    names = (argv if argv is not None else sys.argv[1:]) or list(COMPETITORS)
    for name in names:
        state = ensure(name)
        print(f"{name}: {'ok ' + json.dumps(state.versions) if state.ok else 'not installable: ' + state.error}")


if __name__ == "__main__":
    main()
