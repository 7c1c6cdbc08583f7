"""Dockerfile: two stages on a base image argument (python:3.11-slim by default), build deps only in
the build stage, a virtualenv, healthcheck, no secrets."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def instructions(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        op, _, rest = line.partition(" ")
        out.append((op.upper(), rest.strip()))
    return out


@pytest.fixture(scope="module")
def stages() -> list[list[tuple[str, str]]]:
    """The build stages; global ARGs (before the first FROM) are left out (see `global_args`)."""
    result: list[list[tuple[str, str]]] = []
    for op, rest in instructions((REPO / "Dockerfile").read_text()):
        if op == "FROM":
            result.append([])
        if result:
            result[-1].append((op, rest))
    return result


def global_args() -> dict[str, str]:
    args = {}
    for op, rest in instructions((REPO / "Dockerfile").read_text()):
        if op == "FROM":
            break
        assert op == "ARG", f"only ARG may come before the first FROM, not {op}"
        name, _, default = rest.partition("=")
        args[name] = default
    return args


def test_two_stages_on_the_base_image_argument(stages):
    assert global_args() == {"BASE_IMAGE": "python:3.11-slim"}  # what users get without --build-arg
    assert len(stages) == 2
    assert stages[0][0] == ("FROM", "${BASE_IMAGE} AS build")
    assert stages[1][0] == ("FROM", "${BASE_IMAGE}")


def test_installs_into_a_virtualenv_on_the_path(stages):
    """Debian's own python3 refuses system-wide pip installs (PEP 668): a venv works on both bases."""
    final_runs = " ".join(rest for op, rest in stages[1] if op == "RUN")
    assert "python3 -m venv /opt/plugind/.venv" in final_runs
    pip = "/opt/plugind/.venv/bin/pip install --no-cache-dir --no-index --find-links=/wheels plugind"
    assert pip in final_runs
    assert ("ENV", "PATH=/opt/plugind/.venv/bin:$PATH") in stages[1]
    assert "python3-dev" in " ".join(rest for op, rest in stages[0] if op == "RUN")  # headers where missing


def test_build_deps_only_in_build_stage(stages):
    build_runs = " ".join(rest for op, rest in stages[0] if op == "RUN")
    final_runs = " ".join(rest for op, rest in stages[1] if op == "RUN")
    assert "libcap-dev" in build_runs and "gcc" in build_runs
    assert "libcap-dev" not in final_runs and "gcc" not in final_runs
    assert "libseccomp2" in final_runs and "libcap2" in final_runs
    assert "rm -rf /var/lib/apt/lists/*" in final_runs
    assert ("COPY", "--from=build /wheels /wheels") in stages[1]


def test_healthcheck_user_and_ports(stages):
    final = dict(stages[1])
    # The health check asks the probe listener, which answers while the API is saturated.
    assert "127.0.0.1:7071/health" in final["HEALTHCHECK"]
    assert final["EXPOSE"] == "7070 7071"
    env = final["ENV"]
    assert "PLUGIND_API__PROBE_LISTEN=0.0.0.0:7071" in env and "PLUGIND_API__LISTEN=0.0.0.0:7070" in env
    assert final["USER"] == "root"
    text = (REPO / "Dockerfile").read_text()
    assert "Root on purpose: the sandbox creates namespaces" in text  # says why it is not non-root


def test_no_secrets_baked_in(stages):
    for stage in stages:
        for op, rest in stage:
            if op in ("ENV", "ARG"):
                assert "PLUGIN_TRUST_KEY" not in rest and "PLUGIND_API_TOKEN" not in rest


def test_copied_paths_exist_and_context_is_clean(stages):
    for stage in stages:
        for op, rest in stage:
            if op == "COPY" and not rest.startswith("--from"):
                for src in rest.split()[:-1]:
                    assert (REPO / src).exists(), src
    ignored = (REPO / ".dockerignore").read_text().split()
    for path in (".venv", "data", ".git"):
        assert path in ignored
