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


def _positive(value: str) -> int:
    if not value.isdigit() or not 1 <= int(value) <= 64:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number from 1 to 64")
    return int(value)


def build_parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument("--config", metavar="PATH",
                        help="TOML config (default: $MEDIACDN_CONFIG, else config/local.toml)")
    jsonp = _Parser(add_help=False)
    jsonp.add_argument("--json", action="store_true", help="machine-readable output")
    regionp = _Parser(add_help=False)
    regionp.add_argument("--region", type=_region, help="only this region's edges")

    p = _Parser(prog="mediacdn", description="mediacdn: media ingest and CDN edge cache")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    sub.add_parser("up", parents=[common], help="run the whole topology on this machine")
    sub.add_parser("ingest", parents=[common], help="run the ingest API")
    e = sub.add_parser("edge", parents=[common], help="run one edge node")
    e.add_argument("--node", required=True, help="the edge's name in the config")
    e.add_argument("--worker", type=int, help=argparse.SUPPRESS)  # set by the node itself
    e.add_argument("--run", type=int, help=argparse.SUPPRESS)  # this run of the node
    sub.add_parser("router", parents=[common], help="run the geo router")

    u = sub.add_parser("upload", parents=[common, jsonp], help="upload image files")
    u.add_argument("files", nargs="+", metavar="FILE")
    pu = sub.add_parser("purge", parents=[common, jsonp, regionp], help="purge ids from edges")
    pu.add_argument("ids", nargs="*", metavar="ID", type=_content_id)
    pu.add_argument("--all", action="store_true", help="purge everything")
    d = sub.add_parser("delete", parents=[common, jsonp], help="delete images everywhere")
    d.add_argument("ids", nargs="+", metavar="ID", type=_content_id)
    sub.add_parser("stats", parents=[common, jsonp, regionp], help="edge cache statistics")
    w = sub.add_parser("warm", parents=[common, jsonp, regionp], help="prefetch into edges")
    w.add_argument("ids", nargs="+", metavar="ID", type=_content_id)
    rp = sub.add_parser("reprocess", parents=[common, jsonp],
                        help="derive the configured variants images lack (a ladder change)")
    rp.add_argument("ids", nargs="*", metavar="ID", type=_content_id)
    rp.add_argument("--all", action="store_true", help="every image at the origin")
    rp.add_argument("--variants", nargs="+", metavar="NAME", help="only these variants")
    rp.add_argument("--concurrency", type=_positive, default=2, metavar="N",
                    help="images at once (default 2)")
    s = sub.add_parser("sign", parents=[common], help="print the signed path of a transform")
    s.add_argument("id", metavar="ID", type=_content_id)
    s.add_argument("spec", metavar="SPEC.EXT", help="e.g. w=800,h=600,fit=cover,q=70.webp")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
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

