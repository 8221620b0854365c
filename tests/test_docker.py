"""deploy/docker: what can be checked without a container engine (there is none here, only the docker client).

The Dockerfiles are parsed with BuildKit's own parser (the `dockerfile` package); their `adtk serve` command line
is parsed by the real click command; every file they COPY exists and passes .dockerignore; and the install script
they RUN installs the runtime in a fresh venv here and that venv's `adtk serve` scores frames (the CPU image's
install, minus the container)."""

from __future__ import annotations

import fnmatch
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

dockerfile = pytest.importorskip("dockerfile", reason="the Dockerfile parser (pip install 'adtk[test]')")

REPO_ROOT = Path(__file__).resolve().parents[1]
DOCKER = REPO_ROOT / "deploy" / "docker"
IMAGES = {"cpu.Dockerfile": "cpu,serve", "l4t.Dockerfile": None}


def stages(name: str) -> list[list]:
    """The Dockerfile's instructions, split into build stages (each starts with FROM)."""
    result: list[list] = []
    for command in dockerfile.parse_file(str(DOCKER / name)):
        if command.cmd == "FROM":
            result.append([])
        if result:
            result[-1].append(command)
    return result


def dockerignore_allows(path: str) -> bool:
    """Docker's rule: the last matching pattern wins; `!` re-includes (patterns here are plain names/globs)."""
    allowed = True
    for line in (REPO_ROOT / ".dockerignore").read_text().splitlines():
        pattern = line.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negated = pattern.startswith("!")
        pattern = pattern.lstrip("!")
        parts = Path(path).parts
        prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
        if any(fnmatch.fnmatch(prefix, pattern) for prefix in prefixes):
            allowed = negated
    return allowed


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_dockerfile_builds_a_wheel_then_a_runtime_image_that_runs_adtk_serve(name):
    wheel_stage, runtime_stage = stages(name)
    assert wheel_stage[0].value[-2:] == ("AS", "wheel") and wheel_stage[0].value[0] == "python:3.11-slim"
    assert any(c.cmd == "RUN" and "pip wheel" in c.value[0] and "--no-deps" in c.value[0] for c in wheel_stage)
    assert any(c.cmd == "COPY" and c.flags == ("--from=wheel",) for c in runtime_stage)
    runs = " && ".join(c.value[0] for c in runtime_stage if c.cmd == "RUN")
    assert "install-runtime.sh /wheels" in runs
    user = [c.value[0] for c in runtime_stage if c.cmd == "USER"]
    assert user == ["adtk"]  # not root
    entrypoint = [c for c in runtime_stage if c.cmd == "ENTRYPOINT"]
    cmd = [c for c in runtime_stage if c.cmd == "CMD"]
    assert entrypoint[0].json and entrypoint[0].value == ("adtk", "serve") and cmd[0].json

    from adtk.toolkit.cli.serve import command as serve

    context = serve.make_context("serve", list(cmd[0].value))  # the real option parser: every flag exists
    assert context.params["model"] == Path("/models/model.onnx") and context.params["source"] == "/frames"
    assert context.params["http_bind"] == "0.0.0.0:8080" and context.params["sinks"] == ("-",)


def test_the_cpu_image_installs_the_cpu_flavour_and_the_l4t_image_chooses_one():
    cpu_runs = " ".join(c.value[0] for c in stages("cpu.Dockerfile")[1] if c.cmd == "RUN")
    assert "install-runtime.sh /wheels cpu,serve" in cpu_runs
    l4t = stages("l4t.Dockerfile")
    assert l4t[1][0].value == ("${BASE_IMAGE}",)
    arguments = {c.value[0].split("=")[0]: c.value[0] for c in dockerfile.parse_file(str(DOCKER / "l4t.Dockerfile"))
                 if c.cmd == "ARG"}
    assert arguments["BASE_IMAGE"] == "BASE_IMAGE=nvcr.io/nvidia/l4t-jetpack:r35.4.1"  # JetPack 5.1.2: Python 3.8
    l4t_runs = " ".join(c.value[0] for c in l4t[1] if c.cmd == "RUN")
    assert "install-runtime.sh /wheels serve" in l4t_runs and "install-runtime.sh /wheels cpu,serve" in l4t_runs


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_every_copied_file_exists_and_is_in_the_build_context(name):
    for stage in stages(name):
        for command in stage:
            if command.cmd != "COPY" or command.flags:
                continue
            for source in command.value[:-1]:
                assert (REPO_ROOT / source).exists(), source
                assert dockerignore_allows(source), f"{source} is excluded by .dockerignore"
    assert not dockerignore_allows(".venv") and not dockerignore_allows("tests/conftest.py")


@pytest.mark.slow
def test_the_images_install_script_installs_a_runtime_that_serves(tmp_path, tiny_build, tiny_dataset):
    """What the CPU image's RUN lines do, in a fresh venv of this Python (the image's is 3.11 too): build the
    wheel, run install-runtime.sh with cpu,serve (from PyPI), then score a folder with that venv's adtk serve."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    env = {**os.environ, "PATH": f"{venv / 'bin'}:{os.environ['PATH']}"}
    env.pop("PYTHONPATH", None)
    wheels = tmp_path / "wheels"
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(wheels),
                    str(REPO_ROOT)], check=True, env=env, timeout=600)
    installed = subprocess.run(["sh", str(DOCKER / "install-runtime.sh"), str(wheels), "cpu,serve"], env=env,
                               capture_output=True, text=True, timeout=900)
    assert installed.returncode == 0, installed.stderr[-2000:]
    assert "runtime installed" in installed.stdout
    absent = subprocess.run([str(venv / "bin" / "python"), "-c", "import importlib.util as u; "
                             "print([m for m in ('torch', 'onnx', 'scipy', 'cv2', 'paho') if u.find_spec(m)])"],
                            capture_output=True, text=True, env=env)
    assert absent.stdout.strip() == "['cv2', 'paho']"  # [serve] in, the offline stage out

    frames = tmp_path / "frames"
    frames.mkdir()
    for sample in tiny_dataset.test[:2]:
        (frames / sample.path.name).symlink_to(sample.path)
    daemon = subprocess.Popen([str(venv / "bin" / "adtk"), "serve", str(tiny_build.artefact), "--source",
                               str(frames), "--sink", "-"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env, cwd=tmp_path)
    records = []
    deadline = time.monotonic() + 120
    while len(records) < 2 and time.monotonic() < deadline:
        line = daemon.stdout.readline()
        if not line:
            break
        records.append(json.loads(line))
    daemon.send_signal(signal.SIGTERM)
    daemon.communicate(timeout=60)
    assert daemon.returncode == 0
    assert sorted(Path(r["source"]).name for r in records) == sorted(s.path.name for s in tiny_dataset.test[:2])
