"""`make resync`: log the runs the spool kept while the tracking server was away (pipeline/tracking/spool.py)."""

from __future__ import annotations

import argparse

from pipeline.tracking import spool
from pipeline.tracking.worker import resync

PARAMS = False


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--list", action="store_true", help="list the kept runs, log nothing")
    parser.add_argument("--to", metavar="URI", help="log into this tracking store instead of each run's own")


def main(args: argparse.Namespace, params: None) -> int:
    kept = spool.entries()
    if not kept:
        print(f"resync: no runs kept in {spool.spool_dir()}")
        return 0
    if args.list:
        print("\n".join(entry.describe() for entry in kept))
        return 0
    replayed = resync(args.to)
    print(f"resync: {len(replayed)} of {len(kept)} kept runs logged")
    return 0 if len(replayed) == len(kept) else 1
