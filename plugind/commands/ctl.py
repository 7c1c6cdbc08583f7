"""`plugind ctl`: drive a running daemon over its REST API (list, load, unload, upgrade, call,
health, check, unmount-behavior)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from plugind.errors import ConfigError


def register(subparsers: Any) -> None:
    """Add `ctl` and its sub-commands."""
    p = subparsers.add_parser("ctl", help="talk to a running daemon over its REST API")
    p.add_argument("--url", help="daemon URL (default: http://[api] listen of the config)")
    p.add_argument("--unix", metavar="PATH", help="talk over this Unix socket instead")
    p.add_argument("--token-file", metavar="F", help="bearer token file (else $PLUGIND_API_TOKEN)")
    p.add_argument("--config", metavar="FILE", help="configuration file (for the URL and token file)")
    p.add_argument("--timeout", dest="http_timeout", type=float, default=30.0, help=argparse.SUPPRESS)
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    sub.add_parser("list", help="every known plugin")
    sub.add_parser("health", help="liveness and plugin counts")
    load = sub.add_parser("load", help="load a plugin by name")
    load.add_argument("name")
    unload = sub.add_parser("unload", help="unload a plugin by name")
    unload.add_argument("name")
    upgrade = sub.add_parser("upgrade", help="swap a loaded plugin to another version, no call lost")
    upgrade.add_argument("name")
    upgrade.add_argument("--version", help="the version to move to (default: the highest admitted)")
    check = sub.add_parser(
        "check", help="sample a plugin's resources now; exit 2 when it is over a limit"
    )
    check.add_argument("name")
    behavior = sub.add_parser(
        "unmount-behavior", help="show or set whether a plugin's violations unload it / are logged"
    )
    behavior.add_argument("name")
    behavior.add_argument("--auto-unmount", choices=("on", "off"), help="unload after repeated violations")
    behavior.add_argument("--log-violations", choices=("on", "off"), help="log each violating check")
    call = sub.add_parser("call", help="fire a hook and print the result as JSON")
    call.add_argument("hook")
    call.add_argument("--data", default="null", help="JSON payload (default null)")
    call.add_argument("--policy", choices=("chain", "until_error", "all"), default="chain")
    call.add_argument("--timeout", type=float, default=None, help="deadline in seconds")
    p.set_defaults(func=run)


def _token(args: argparse.Namespace, token_file: str | None) -> str | None:
    from plugind.api.auth import check_token, read_token_file

    env = os.environ.get("PLUGIND_API_TOKEN", "").strip()
    if env:
        check_token(env, "PLUGIND_API_TOKEN")
        return env
    path = args.token_file or token_file
    if not path:
        return None
    try:
        token = read_token_file(Path(path))
    except FileNotFoundError:
        if args.token_file:
            raise ConfigError(f"token file {path} not found", path=str(path)) from None
        return None
    check_token(token, f"token file {path}")
    return token or None


def run(args: argparse.Namespace) -> int:
    """Run one ctl action; prints the result, returns the exit status. Raises PluginError."""
    from plugind.api.client import PlugindClient
    from plugind.config import load_config
    from plugind.wire.limits import json_problem

    url = args.url
    token_file = None
    unix = args.unix
    if url is None or args.token_file is None:
        settings = load_config(args.config)
        url = url or f"http://{settings.api.listen}"
        token_file = str(settings.api.token_file) if settings.api.token_file else None
    if args.action == "call":
        try:
            data = json.loads(args.data)
        except ValueError as exc:
            raise ConfigError(f"--data is not valid JSON: {exc}") from None
        problem = json_problem(args.data.encode("utf-8", "surrogatepass"), data, "--data")
        if problem is not None:  # the daemon would refuse it (and a surrogate cannot even be sent)
            raise ConfigError(problem)
    token = _token(args, token_file)
    http_timeout = args.http_timeout
    if args.action == "call" and args.timeout is not None:
        http_timeout = max(http_timeout, args.timeout + 10.0)  # the daemon answers after the deadline
    if args.action == "upgrade":
        http_timeout = max(http_timeout, 300.0)  # start-up of the new version, then the drain
    with PlugindClient(url, token=token, unix_socket=unix, timeout=http_timeout) as api:
        if api.cleartext_token:
            print(f"plugind ctl: warning: the API token goes to {api.where} over plain HTTP, unencrypted",
                  file=sys.stderr)
        if args.action == "health":
            _print(api.health())
        elif args.action == "list":
            for p in api.plugins():
                pid = p.get("pid") or "-"
                version = p["version"] or "-"  # a wanted plugin whose bundle is gone
                print(f"{p['name']:<24} {version:<10} {p['trust_level']:<10} {p['state']:<11} {pid}")
        elif args.action == "load":
            print(api.load(args.name)["message"])
        elif args.action == "unload":
            reply = api.unload(args.name)
            print(reply["message"])
            if reply.get("warning"):  # done, but e.g. not recorded in the state file
                print(f"warning: {reply['warning']}", file=sys.stderr)
        elif args.action == "upgrade":
            print(api.upgrade(args.name, args.version)["message"])
        elif args.action == "check":
            reply = api.check(args.name)
            _print(reply)
            return 2 if reply.get("violations") else 0
        elif args.action == "unmount-behavior":
            auto, logged = _switch(args.auto_unmount), _switch(args.log_violations)
            _print(api.unmount_behavior(args.name, auto_unmount=auto, log_violations=logged))
        elif args.action == "call":
            reply = api.call(args.hook, data, policy=args.policy, timeout_s=args.timeout)
            _print(reply)
            return 0 if reply.get("success") else 2
    return 0


def _switch(value: str | None) -> bool | None:
    return None if value is None else value == "on"


def _print(value: Any) -> None:
    json.dump(value, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")
