"""The authoring CLI end to end, as real subprocesses: keygen, new, pack, sign, trust, verify; dev_prepare."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PLUGIND_") and k != "PLUGIN_TRUST_KEY"}
    env.update(extra)
    return env


class Cli:
    def __init__(self, cwd: Path) -> None:
        self.cwd = cwd
        self.env = clean_env()

    def __call__(self, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [sys.executable, "-m", "plugind", *args],
            cwd=self.cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if ok:
            assert proc.returncode == 0, proc.stderr
        return proc

    def fails(self, *args: str, code: int = 1) -> str:
        """Run a command that must fail; returns its single stderr line."""
        proc = self(*args, ok=False)
        assert proc.returncode == code, (proc.stdout, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1, proc.stderr  # one clear line, no traceback
        return lines[0]


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    return Cli(tmp_path)


@pytest.fixture
def authored(cli: Cli, tmp_path: Path) -> Cli:
    """new -> keygen -> config -> pack -> sign -> trust init -> trust add, all through the CLI."""
    cli("new", "my-plug")
    cli("keygen", "release", "--out-dir", "keys")
    pub = (tmp_path / "keys" / "release.pub").read_text().strip()
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "plugins.toml").write_text(
        f'[security]\ntrust_list_path = "state/trust.list"\n[security.public_keys]\nrelease = "{pub}"\n'
    )
    cli("pack", "my-plug", "-o", ".")
    cli("sign", "my-plug-0.1.0.plugin", "--key", "keys/release.key")
    cli.env["PLUGIN_TRUST_KEY"] = os.urandom(32).hex()
    cli("trust", "init")
    cli("trust", "add", "my-plug-0.1.0.plugin", "--note", "first release")
    return cli


def test_round_trip_new_pack_sign_trust_verify(authored: Cli, tmp_path: Path) -> None:
    out = authored("verify", "my-plug-0.1.0.plugin").stdout
    digest = __import__("hashlib").sha3_512((tmp_path / "my-plug-0.1.0.plugin").read_bytes()).hexdigest()
    assert f"digest:  sha3-512:{digest}" in out
    assert "key:     release" in out
    assert "trust:   trusted" in out
    assert "policy:  allowed" in out
    listing = authored("trust", "list").stdout
    assert "my-plug" in listing and "0.1.0" in listing and "first release" in listing
    assert stat.S_IMODE((tmp_path / "keys" / "release.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "state" / "trust.list").stat().st_mode) == 0o600


def test_scaffolded_plugin_test_passes(cli: Cli, tmp_path: Path) -> None:
    cli("new", "9lives", "--dir", "p")
    files = sorted(p.name for p in (tmp_path / "p").iterdir())
    assert files == [".gitignore", "plugin.toml", "plugin_9lives.py", "test_plugin_9lives.py"]
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_plugin_9lives.py"],
        cwd=tmp_path / "p",
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 passed" in proc.stdout


def test_new_refuses_bad_names_and_existing_dirs(cli: Cli, tmp_path: Path) -> None:
    assert (
        cli.fails("new", "Bad_Name")
        == "plugind: error: plugin name 'Bad_Name' must match [a-z0-9][a-z0-9_-]{0,62}"
    )
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("keep")
    assert cli.fails("new", "ok", "--dir", "taken") == (
        "plugind: error: taken already exists and is not empty; choose another --dir"
    )
    assert (tmp_path / "taken" / "x").read_text() == "keep"


def test_reproducible_pack(cli: Cli, tmp_path: Path) -> None:
    cli("new", "rep")
    first = cli("pack", "rep", "-o", "a.plugin").stdout
    (tmp_path / "rep" / "__pycache__").mkdir()
    (tmp_path / "rep" / "__pycache__" / "x.pyc").write_bytes(b"junk")
    os.utime(tmp_path / "rep" / "rep.py", (0, 0))
    second = cli("pack", "rep", "-o", "b.plugin").stdout
    assert (tmp_path / "a.plugin").read_bytes() == (tmp_path / "b.plugin").read_bytes()
    assert first.splitlines()[1] == second.splitlines()[1]  # same "NAME VERSION sha3-512:..." line


def test_keygen_never_overwrites_silently(cli: Cli, tmp_path: Path) -> None:
    cli("keygen", "dev")
    before = (tmp_path / "dev.key").read_bytes()
    assert (
        cli.fails("keygen", "dev")
        == "plugind: error: dev.key already exists; refusing to overwrite a key (use --force)"
    )
    assert (tmp_path / "dev.key").read_bytes() == before
    cli("keygen", "dev", "--force")
    assert (tmp_path / "dev.key").read_bytes() != before


def test_flipped_byte_is_refused(authored: Cli, tmp_path: Path) -> None:
    bundle = tmp_path / "my-plug-0.1.0.plugin"
    data = bytearray(bundle.read_bytes())
    data[100] ^= 0x01
    bundle.write_bytes(bytes(data))
    line = authored.fails("verify", "my-plug-0.1.0.plugin")
    assert line.startswith("plugind: error: my-plug-0.1.0.plugin was modified after signing")


def test_unconfigured_key_is_refused(authored: Cli, tmp_path: Path) -> None:
    authored("keygen", "stranger")
    authored("sign", "my-plug-0.1.0.plugin", "--key", "stranger.key")
    before = (tmp_path / "state" / "trust.list").read_bytes()
    line = authored.fails("verify", "my-plug-0.1.0.plugin")
    assert line == (
        "plugind: error: my-plug-0.1.0.plugin: the signature does not verify under any configured key "
        "(release): the bundle was modified after signing, or it was signed by a key that is not configured"
    )
    assert authored.fails("trust", "add", "my-plug-0.1.0.plugin").startswith(
        "plugind: error: my-plug-0.1.0.plugin: the signature does not verify"
    )
    assert (tmp_path / "state" / "trust.list").read_bytes() == before  # nothing written


def test_signed_but_not_listed_exits_non_zero(authored: Cli) -> None:
    authored("trust", "remove", "my-plug", "0.1.0")
    proc = authored("verify", "my-plug-0.1.0.plugin", ok=False)
    assert proc.returncode == 2
    assert "trust:   signed" in proc.stdout
    refused = "policy:  refused: my-plug 0.1.0 is signed and security.min_trust_level is 'trusted'"
    assert refused in proc.stdout
    assert "no trusted plugins" in authored("trust", "list").stdout


def test_unsigned_bundle_cannot_be_trusted(authored: Cli, tmp_path: Path) -> None:
    (tmp_path / "my-plug-0.1.0.plugin.sig").unlink()
    assert authored.fails("trust", "add", "my-plug-0.1.0.plugin") == (
        "plugind: error: my-plug-0.1.0.plugin: no signature (my-plug-0.1.0.plugin.sig is missing); "
        "sign it first with `plugind sign BUNDLE --key FILE`"
    )
    proc = authored("verify", "my-plug-0.1.0.plugin", ok=False)
    assert (proc.returncode, "trust:   untrusted" in proc.stdout) == (2, True)


def test_wrong_or_malformed_trust_key(authored: Cli, tmp_path: Path) -> None:
    before = (tmp_path / "state" / "trust.list").read_bytes()
    authored.env["PLUGIN_TRUST_KEY"] = os.urandom(32).hex()
    for args in (
        ["trust", "list"],
        ["verify", "my-plug-0.1.0.plugin"],
        ["trust", "add", "my-plug-0.1.0.plugin"],
    ):
        assert authored.fails(*args) == (
            "plugind: error: state/trust.list: cannot decrypt the trust list: wrong PLUGIN_TRUST_KEY, "
            "or the file was truncated or altered"
        )
    authored.env["PLUGIN_TRUST_KEY"] = "not-hex"
    assert authored.fails("trust", "list") == (
        "plugind: error: PLUGIN_TRUST_KEY is malformed: expected 64 hex characters (32 bytes), "
        "got 7 characters"
    )
    del authored.env["PLUGIN_TRUST_KEY"]
    assert authored.fails("trust", "list").startswith("plugind: error: PLUGIN_TRUST_KEY is not set")
    assert (tmp_path / "state" / "trust.list").read_bytes() == before


@pytest.mark.parametrize("damage", ["empty", "truncated", "altered"])
def test_damaged_trust_list(authored: Cli, tmp_path: Path, damage: str) -> None:
    path = tmp_path / "state" / "trust.list"
    blob = path.read_bytes()
    path.write_bytes({"empty": b"", "truncated": blob[:30], "altered": blob[:-3] + b"xyz"}[damage])
    expected = {
        "empty": "trust list is empty (0 bytes)",
        "truncated": "trust list is truncated",
        "altered": "cannot decrypt the trust list",
    }[damage]
    assert expected in authored.fails("verify", "my-plug-0.1.0.plugin")
    assert expected in authored.fails("trust", "list")


def test_malformed_public_key_in_config(authored: Cli, tmp_path: Path) -> None:
    (tmp_path / "config" / "plugins.toml").write_text('[security.public_keys]\nrelease = "abc"\n')
    line = authored.fails("verify", "my-plug-0.1.0.plugin")
    assert line.startswith("plugind: error: config/plugins.toml: security.public_keys: ")
    assert "64 hex characters" in line


def test_pack_refuses_symlinks(cli: Cli, tmp_path: Path) -> None:
    cli("new", "linky")
    (tmp_path / "linky" / "passwd").symlink_to("/etc/passwd")
    assert (
        cli.fails("pack", "linky")
        == "plugind: error: passwd: is a symbolic link; a bundle holds regular files only"
    )
    assert not list(tmp_path.glob("*.plugin"))


def test_sign_refuses_an_open_key_file(authored: Cli, tmp_path: Path) -> None:
    os.chmod(tmp_path / "keys" / "release.key", 0o640)
    before = (tmp_path / "my-plug-0.1.0.plugin.sig").read_bytes()
    assert authored.fails("sign", "my-plug-0.1.0.plugin", "--key", "keys/release.key") == (
        "plugind: error: keys/release.key: private key is accessible by others (mode 0640); "
        "run chmod 600 keys/release.key"
    )
    assert (tmp_path / "my-plug-0.1.0.plugin.sig").read_bytes() == before


# --- scripts/dev_prepare.py ---------------------------------------------------------------------


def test_dev_prepare_is_idempotent_and_trusts_the_examples(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "config").mkdir(parents=True)
    shutil.copy(REPO / "config" / "plugins.toml", repo / "config" / "plugins.toml")
    shutil.copytree(REPO / "examples", repo / "examples", ignore=shutil.ignore_patterns("__pycache__"))
    examples = sorted(p.parent.name for p in (repo / "examples").glob("*/plugin.toml"))
    assert examples, "no example plugins to prepare"

    def prepare() -> str:
        proc = subprocess.run(
            [sys.executable, str(REPO / "scripts" / "dev_prepare.py"), "--repo", str(repo)],
            env=clean_env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    first = prepare()
    token = (repo / "data" / "dev-api-token").read_text().strip()
    assert token in first
    for rel in ("data/dev-api-token", "data/dev.env", "data/keys/dev.key", "data/trust.list"):
        assert stat.S_IMODE((repo / rel).stat().st_mode) == 0o600, rel
    bundles = {p.name: p.read_bytes() for p in (repo / "plugins").iterdir()}
    assert len(bundles) == 2 * len(examples)  # each bundle and its .sig
    # Read it the way `make run` does: sourced by a shell with `set -a`.
    sourced = subprocess.run(
        ["bash", "-c", "set -a; . data/dev.env; set +a; env -0"],
        cwd=repo, env={"PATH": os.environ["PATH"]}, capture_output=True, check=True,
    ).stdout.decode()
    env_lines = {
        k: v for k, v in (item.split("=", 1) for item in sourced.split("\0") if "=" in item)
        if k in ("PLUGIN_TRUST_KEY", "PLUGIND_SECURITY__PUBLIC_KEYS")
    }
    assert sourced and len(env_lines) == 2, "data/dev.env does not source cleanly in a shell"
    assert len(env_lines["PLUGIN_TRUST_KEY"]) == 64
    public_keys = json.loads(env_lines["PLUGIND_SECURITY__PUBLIC_KEYS"])
    assert public_keys == {"dev": (repo / "data" / "keys" / "dev.pub").read_text().strip()}

    second = prepare()
    assert token not in second  # printed once, when created
    assert "unchanged, signed, trusted" in second
    assert {p.name: p.read_bytes() for p in (repo / "plugins").iterdir()} == bundles
    assert (repo / "data" / "dev-api-token").read_text().strip() == token

    # What `make run` sources makes every example bundle trusted for the daemon.
    cli = Cli(repo)
    cli.env.update(env_lines)
    for name in (n for n in bundles if n.endswith(".plugin")):
        out = cli("verify", f"plugins/{name}").stdout
        assert "trust:   trusted" in out and "key:     dev" in out


def test_genkey_prints_a_key_the_trust_commands_accept(cli: Cli, tmp_path: Path) -> None:
    key = cli("trust", "genkey").stdout.strip()
    assert len(key) == 64 and int(key, 16) >= 0
    assert cli("trust", "genkey").stdout.strip() != key  # fresh each time
    cli.env["PLUGIN_TRUST_KEY"] = key
    assert "generation 1" in cli("trust", "init").stdout


def test_generations_rollback_renew_and_verify_under_each_level(authored: Cli, tmp_path: Path) -> None:
    path = tmp_path / "state" / "trust.list"
    assert "generation 2" in authored("trust", "list").stdout  # init, add
    saved = path.read_bytes()
    assert "now generation 3" in authored("trust", "remove", "my-plug").stdout
    path.write_bytes(saved)
    line = authored.fails("trust", "list")
    assert "trust list generation 2 is older than generation 3 already seen" in line
    assert "rolled-back" in authored.fails("verify", "my-plug-0.1.0.plugin")
    # Re-creating the list starts above what was seen, so it is not a rollback.
    assert "generation 4" in authored("trust", "init", "--force").stdout
    out = authored("trust", "renew", "--valid-for", "30d").stdout
    assert "generation 5, valid until " in out
    assert "give --valid-for" in authored.fails("trust", "renew")
    # plugind verify says what the configured minimum level does with a signed, unlisted bundle.
    for level, code in (("trusted", 2), ("signed", 0), ("untrusted", 0)):
        authored.env["PLUGIND_SECURITY__MIN_TRUST_LEVEL"] = level
        proc = authored("verify", "my-plug-0.1.0.plugin", ok=False)
        assert proc.returncode == code, proc.stdout
        assert "trust:   signed" in proc.stdout
        assert f"security.min_trust_level is {level!r}" in proc.stdout


def test_init_force_starts_above_the_list_it_replaces_without_a_state_file(
    authored: Cli, tmp_path: Path
) -> None:
    # With the state file gone (the docs allow deleting it), a list made again at generation 1 let
    # an older copy of the one it replaced (generation 3, still trusting my-plug) read as newer.
    path = tmp_path / "state" / "trust.list"
    authored("trust", "add", "my-plug-0.1.0.plugin", "--note", "again")
    assert "generation 3" in authored("trust", "list").stdout
    old_copy = path.read_bytes()
    (tmp_path / "data" / "trust-state.json").unlink()
    assert "generation 4" in authored("trust", "init", "--force").stdout
    path.write_bytes(old_copy)
    line = authored.fails("trust", "list")
    assert "trust list generation 3 is older than generation 4 already seen" in line
