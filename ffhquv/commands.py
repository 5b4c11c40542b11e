"""Implementations of the CLI subcommands (imported lazily by :mod:`ffhquv.cli`)."""

from __future__ import annotations

import argparse


def cmd_fit(args: argparse.Namespace) -> int:
    raise SystemExit("ffhquv fit: not implemented yet")


def cmd_serve(args: argparse.Namespace) -> int:
    raise SystemExit("ffhquv serve: not implemented yet")


def cmd_clear(args: argparse.Namespace) -> int:
    raise SystemExit("ffhquv clear: not implemented yet")


def cmd_build_model(args: argparse.Namespace) -> int:
    return 0
