"""``lookalike console``: open the operator console (a Textual terminal UI) on a database."""

from __future__ import annotations

import argparse


def cmd_console(args: argparse.Namespace) -> int:
    from console.tui.app import ConsoleConfig, LookalikeApp
    from engine import EncoderConfig

    if args.weights and not args.model:
        from engine.core.errors import InvalidRequestError

        raise InvalidRequestError("--weights belongs to an encoder: give --model NAME with it")
    encoder = EncoderConfig(name=args.model, weights=args.weights) if args.model else None
    config = ConsoleConfig(db=args.db, encoder=encoder, device=args.device, thumbnails=not args.no_images)
    LookalikeApp(config).run()
    return 0


def add_commands(sub: argparse._SubParsersAction, *, common: argparse.ArgumentParser, search_opts: argparse.ArgumentParser) -> None:
    console = sub.add_parser("console", parents=[common], help="the operator console: ingest, search, train, review, browse")
    console.add_argument("--model", "--encoder", dest="model", help="encoder that ingests new folders, as for lookalike ingest "
                         "(default: the base encoder of the active model, else the default encoder)")
    console.add_argument("--weights", help="local weights file for that encoder")
    console.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when present)")
    console.add_argument("--no-images", action="store_true", help="no image previews, text only")
    console.set_defaults(func=cmd_console)
