"""`mediacdn`: a thin layer over the same config loader and app factories as the services.

Exit codes: 0 all done, 1 some target failed (each named), 2 usage or config error.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from common.errors import ConfigError
from common.hashing import is_content_id

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line, exit 2: scripts read the line, people read `--help`.
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(EXIT_USAGE)


def _content_id(value: str) -> str:
    if not is_content_id(value):
        raise argparse.ArgumentTypeError(
            f"{value!r} is not an image id (64 lowercase hex characters)")
    return value


def _region(value: str) -> str:
    if not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,31}", value):
        raise argparse.ArgumentTypeError(f"{value!r} is not a region name")
    return value


CONFIG_HELP = "TOML config (default: $MEDIACDN_CONFIG, else config/local.toml)"
ENV_CONFIG = "  MEDIACDN_CONFIG       the config file when --config is not given\n"
ENV_ADMIN = "  MEDIACDN_ADMIN_TOKEN  the admin token (the variable [secrets] names)\n"
ENV_API = "  MEDIACDN_API_KEY      the upload API key (the variable [secrets] names)\n"
ENV_TLS = "  (HTTPS services are verified with the config's tls_ca, else the system store)\n"
ID = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0"
# Per subcommand: (help, environment it reads, example).
HELP: dict[str, tuple[str, str, str]] = {
    "up": ("run the whole topology on this machine", ENV_API + ENV_ADMIN,
           "mediacdn up --config config/local.toml"),
    "ingest": ("run the ingest API", ENV_API + ENV_ADMIN, "mediacdn ingest"),
    "edge": ("run one edge node", ENV_ADMIN, "mediacdn edge --node eu-west-a"),
    "router": ("run the geo router", "", "mediacdn router"),
    "upload": ("upload image files", ENV_API + ENV_TLS, "mediacdn upload photo.jpg"),
    "purge": ("purge ids from edges", ENV_ADMIN + ENV_TLS,
              f"mediacdn purge {ID} --region eu-west"),
    "delete": ("delete images everywhere", ENV_ADMIN + ENV_TLS, f"mediacdn delete {ID}"),
    "stats": ("edge cache statistics", ENV_ADMIN + ENV_TLS, "mediacdn stats --json"),
    "warm": ("prefetch into edges", ENV_TLS, f"mediacdn warm {ID}"),
    "reprocess": ("derive the configured variants images lack (a ladder change)",
                  ENV_ADMIN + ENV_TLS, "mediacdn reprocess --all --variants w1440"),
    "sign": ("print the signed path of a transform",
             "  MEDIACDN_SIGNING_KEY  the signing key (the variable the config names)\n",
             f"mediacdn sign {ID} w=800,h=600,fit=cover.webp"),
}


def _sub(sub: argparse._SubParsersAction[_Parser], name: str,
         parents: list[_Parser]) -> _Parser:
    what, env, example = HELP[name]
    epilog = f"environment:\n{ENV_CONFIG}{env}\nexample:\n  {example}\n"
    parser: _Parser = sub.add_parser(name, parents=parents, help=what, description=what,
                                     epilog=epilog,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mediacdn")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown"


def _positive(value: str) -> int:
    if not value.isdigit() or not 1 <= int(value) <= 64:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number from 1 to 64")
    return int(value)


def build_parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    # SUPPRESS: a --config given before the subcommand is not overwritten by its default.
    common.add_argument("--config", metavar="PATH", default=argparse.SUPPRESS,
                        help=CONFIG_HELP)
    jsonp = _Parser(add_help=False)
    jsonp.add_argument("--json", action="store_true", help="machine-readable output")
    regionp = _Parser(add_help=False)
    regionp.add_argument("--region", type=_region, help="only this region's edges")

    p = _Parser(prog="mediacdn", description="mediacdn: media ingest and CDN edge cache",
                epilog=f"environment:\n{ENV_CONFIG}\nexample:\n  mediacdn --config "
                       "config/local.toml up\n  mediacdn upload --help",
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"mediacdn {_version()}")
    p.add_argument("--config", metavar="PATH", default=argparse.SUPPRESS, help=CONFIG_HELP)
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _sub(sub, "up", [common])
    _sub(sub, "ingest", [common])
    e = _sub(sub, "edge", [common])
    e.add_argument("--node", required=True, help="the edge's name in the config")
    e.add_argument("--worker", type=int, help=argparse.SUPPRESS)  # set by the node itself
    e.add_argument("--run", type=int, help=argparse.SUPPRESS)  # this run of the node
    _sub(sub, "router", [common])

    u = _sub(sub, "upload", [common, jsonp])
    u.add_argument("files", nargs="+", metavar="FILE")
    pu = _sub(sub, "purge", [common, jsonp, regionp])
    pu.add_argument("ids", nargs="*", metavar="ID", type=_content_id)
    pu.add_argument("--all", action="store_true", help="purge everything")
    d = _sub(sub, "delete", [common, jsonp])
    d.add_argument("ids", nargs="+", metavar="ID", type=_content_id)
    _sub(sub, "stats", [common, jsonp, regionp])
    w = _sub(sub, "warm", [common, jsonp, regionp])
    w.add_argument("ids", nargs="+", metavar="ID", type=_content_id)
    rp = _sub(sub, "reprocess", [common, jsonp])
    rp.add_argument("ids", nargs="*", metavar="ID", type=_content_id)
    rp.add_argument("--all", action="store_true", help="every image at the origin")
    rp.add_argument("--variants", nargs="+", metavar="NAME", help="only these variants")
    rp.add_argument("--concurrency", type=_positive, default=2, metavar="N",
                    help="images at once (default 2)")
    s = _sub(sub, "sign", [common])
    s.add_argument("id", metavar="ID", type=_content_id)
    s.add_argument("spec", metavar="SPEC.EXT", help="e.g. w=800,h=600,fit=cover,q=70.webp")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.config = getattr(args, "config", None)
    if args.command in ("purge", "reprocess") and bool(args.ids) == bool(args.all):
        parser.error(f"{args.command} takes image ids or --all, not both and not neither")
    commands: dict[str, Callable[[argparse.Namespace], int]] = {}
    from scripts import ops, reprocess, services, sign

    commands.update(services.COMMANDS)
    commands.update(sign.COMMANDS)
    commands.update(reprocess.COMMANDS)
    commands.update(ops.COMMANDS)
    try:
        return commands[args.command](args)
    except ConfigError as exc:
        sys.stderr.write(f"mediacdn: config error: {exc}\n")
        return EXIT_USAGE
    except UsageError as exc:
        sys.stderr.write(f"mediacdn: error: {exc}\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


def environ() -> dict[str, str]:
    return dict(os.environ)

