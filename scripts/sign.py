"""`mediacdn sign ID SPEC.EXT`: the signed path of a transform, with the first key the
config names (what an app does with common.signing.sign_path)."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from common.errors import BadRequest
from common.signing import sign_path
from common.transform import check_limits, parse
from config import load_config
from edge.paths import KNOWN_EXTS
from scripts.cli import EXIT_OK, UsageError, environ


def cmd_sign(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, environ())
    spec, dot, ext = str(args.spec).rpartition(".")
    if not dot or ext not in KNOWN_EXTS:
        raise UsageError(f"{args.spec!r}: give SPEC.EXT, EXT one of {', '.join(KNOWN_EXTS)}")
    try:
        check_limits(parse(spec), cfg.transcode)
    except BadRequest as exc:
        raise UsageError(exc.detail) from None
    keys = cfg.secrets.signing_values  # the first enabled one signs; all of them verify
    if not keys:
        raise UsageError(f"no signing key: set {cfg.secrets.unset_hint('signing_keys')} "
                         "(mediacdn up prints the generated one)")
    print(sign_path(keys[0], args.id, spec, ext))
    return EXIT_OK


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {"sign": cmd_sign}
