"""``bess-edge api-key create|list|revoke``: who may call the API (keys file, hashed)."""

from __future__ import annotations

import argparse
import sys

from bess_edge.cli._common import EXIT_FAILURE, EXIT_OK, add_config_argument, load_or_exit
from bess_edge.storage.keys import ROLE_RANK, FileKeyStore, KeyRefused


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "api-key",
        help="create, list or revoke API keys",
        description="API keys for 'bess-edge api' and its dashboard. Roles: viewer reads; "
        "operator also acknowledges alerts and edits thresholds; admin also manages keys. "
        "Only a hash of each key is stored ([api] keys_file, default api-keys.json beside the "
        "SQLite file); 'create' prints the key once, alone on the last line.",
    )
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    create = verbs.add_parser("create", help="make a key and print it once")
    create.add_argument("name", help="who holds it (letters, digits, _ . @ -)")
    create.add_argument("--role", choices=list(ROLE_RANK), default="viewer")
    verbs.add_parser("list", help="names, roles and creation times (never the keys)")
    revoke = verbs.add_parser("revoke", help="forget a key at once")
    revoke.add_argument("name")
    for sub in verbs.choices.values():
        add_config_argument(sub)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    settings = load_or_exit(args.config)
    path = settings.api.keys_path(settings.storage)
    keys = FileKeyStore(path)
    try:
        if args.verb == "create":
            key = keys.create(args.name, args.role)
            print(f"created {args.role} key {args.name!r} in {path}; it is shown only now:")
            print(key)
        elif args.verb == "revoke":
            keys.revoke(args.name)
            print(f"revoked key {args.name!r}")
        else:
            for info in keys.list():
                print(f"{info.name}\t{info.role}\t...{info.key_hint}\tcreated {info.created_ts_ms}")
    except KeyRefused as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_FAILURE
    except ValueError:  # a name the model refuses
        print(
            f"invalid key name {args.name!r}: use 1 to 64 letters, digits, '_', '.', '@' or '-'",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    return EXIT_OK
