"""The `recommend`, `export` and `serve` subcommands of `recbole-hybrid`: use a trained model."""

import csv
import json
import os
import sys

from texttable import Texttable

from recbole_hybrid.cli.common import no_settings, subparser
from recbole_hybrid.errors import UserError

FORMATS = ("table", "json", "csv")


def add_parsers(subparsers):
    """Add `recommend`, `export` and `serve` to the `recbole-hybrid` command."""
    _add_recommend_parser(subparsers)
    _add_export_parser(subparsers)
    _add_serve_parser(subparsers)


def _model_arguments(parser):
    parser.add_argument("--model_file", required=True,
                        help="a bundle (recbole-hybrid export), or a run's checkpoint (.pth), "
                        "which also needs its dataset")
    parser.add_argument("--data_path", default=None,
                        help="checkpoints only: RecBole's data folder, if not the one the run used")
    parser.add_argument("--device", default=None,
                        help="cpu, cuda, cuda:1 (default: cuda if available)")
    _trust_argument(parser)


def _trust_argument(parser):
    parser.add_argument("--trust_checkpoint", action="store_true",
                        help="read a checkpoint that names more than RecBole's checkpoints hold "
                        "(unpickling it may run code: only for files from a source you trust)")


def _add_recommend_parser(subparsers):
    parser = subparser(
        subparsers, "recommend", "top-k items for users or item sequences",
        "Print the top-k items a trained model recommends for users (after their whole history: "
        "train, valid and test items) or for hand-written item sequences, in the dataset's own "
        "tokens. Items already in the history are left out unless --include_seen.",
        _recommend,
    )
    _model_arguments(parser)
    parser.add_argument("--users", default=None, help="comma-separated user tokens, e.g. 1,2,3")
    parser.add_argument("--users_file", default=None, help="a file with one user token per line")
    parser.add_argument("--sequence", action="append", default=None,
                        help='item tokens, oldest first, space-separated: "12 7 301"; repeatable')
    parser.add_argument("--k", default="10", help="how many items per query (default 10)")
    parser.add_argument("--include_seen", action="store_true",
                        help="keep the items already in the history")
    parser.add_argument("--format", default="table", choices=FORMATS, help="output format")


def _recommend(args, overrides):
    no_settings("recommend", overrides)
    given = [name for name in ("users", "users_file", "sequence") if getattr(args, name)]
    if len(given) != 1:
        raise UserError("give the queries with exactly one of --users, --users_file and "
                        f"--sequence (got {', '.join('--' + g for g in given) or 'none'})")
    try:
        k = int(args.k)
    except ValueError:
        raise UserError(f"--k must be a whole number, got {args.k!r}") from None
    recommender = _load(args)
    if args.sequence:
        queries = [s.split() for s in args.sequence]
        results = recommender.recommend(sequences=queries, k=k, exclude_seen=not args.include_seen)
        labels = [" ".join(s) for s in queries]
    else:
        users = _read_users(args.users_file) if args.users_file else args.users.split(",")
        users = [u.strip() for u in users if u.strip()]
        if not users:
            raise UserError("no user tokens given: --users takes e.g. 1,2,3")
        results = recommender.recommend(users=users, k=k, exclude_seen=not args.include_seen)
        labels = users
    for label, result in zip(labels, results):
        if result["ignored"]:
            print(f"note: ignored items unknown to the model in {label!r}: "
                  f"{' '.join(result['ignored'])}", file=sys.stderr)
    if args.format == "json":
        print(json.dumps(results, indent=2))
    elif args.format == "csv":
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(["query", "rank", "item", "score"])
        for label, result in zip(labels, results):
            for rank, (item, score) in enumerate(zip(result["items"], result["scores"]), 1):
                writer.writerow([label, rank, item, f"{score:.6g}"])
    else:
        print(format_table(recommender, labels, results, k, not args.include_seen))


def format_table(recommender, labels, results, k, exclude_seen):
    """One small table of rank, item and score per query, under a line naming the query."""
    seen = "items already in the history left out" if exclude_seen else "history items kept"
    blocks = [f"{recommender.name}: top {k} ({seen})"]
    for label, result in zip(labels, results):
        if result["user"] is None:
            head = f"sequence {_shorten(label.split())}"
        else:
            history = [recommender.items[i] for i in recommender.user_query(result["user"]).items]
            head = f"user {label}, history of {len(history)} items: {_shorten(history)}"
        table = Texttable()
        table.set_deco(Texttable.HEADER)
        table.set_cols_dtype(["i", "t", "f"])
        table.set_cols_align(["r", "l", "r"])
        table.set_precision(4)
        table.add_rows([["rank", "item", "score"],
                        *([rank, item, score] for rank, (item, score)
                          in enumerate(zip(result["items"], result["scores"]), 1))])
        blocks.append(f"\n{head}\n{table.draw()}")
    return "\n".join(blocks)


def _shorten(tokens, last=8):
    return " ".join(tokens) if len(tokens) <= last else "... " + " ".join(tokens[-last:])


def _read_users(path):
    try:
        with open(path, "rb") as f:
            content = f.read()
    except OSError as error:
        raise UserError(f"cannot read --users_file {path}: {error.strerror}") from None
    try:
        return content.decode("utf-8").splitlines()
    except UnicodeDecodeError as error:
        line = content[:error.start].count(b"\n") + 1
        raise UserError(f"--users_file {path} is not UTF-8 text (line {line}: {error.reason}): "
                        "give one user token per line, saved as UTF-8") from None


def _add_export_parser(subparsers):
    parser = subparser(
        subparsers, "export", "write a trained model as a bundle that loads without its dataset",
        "Write one file with the model's weights, configuration, user and item tokens and user "
        "histories; `recommend --model_file` and `serve --model_file` load it without the "
        "dataset, and loading it never unpickles objects.",
        _export,
    )
    parser.add_argument("--checkpoint", required=True, help="a run's checkpoint (.pth)")
    parser.add_argument("--output", required=True, help="the bundle to write, e.g. model.bundle")
    parser.add_argument("--data_path", default=None,
                        help="RecBole's data folder, if not the one the run used")
    parser.add_argument("--force", action="store_true", help="replace an existing --output")
    _trust_argument(parser)


def _export(args, overrides):
    from recbole_hybrid.serving.recommender import Recommender

    no_settings("export", overrides)
    from recbole_hybrid.serving.bundle import is_bundle

    if os.path.exists(args.output) and not args.force:
        raise UserError(f"{args.output} exists: pass --force to replace it, or another --output")
    if os.path.isfile(args.checkpoint) and is_bundle(args.checkpoint):
        raise UserError(f"--checkpoint {args.checkpoint} is a bundle already: copy the file as it "
                        "is; export writes a bundle from a run's checkpoint (.pth)")
    recommender = Recommender.load(args.checkpoint, device="cpu", data_path=args.data_path,
                                   trust_checkpoint=args.trust_checkpoint)
    recommender.save(args.output)
    size = os.path.getsize(args.output) / 2**20
    print(f"wrote {args.output} ({size:.1f} MB): {recommender.name}, "
          f"{len(recommender.users) - 1} users, {len(recommender.items) - 1} items")


def _add_serve_parser(subparsers):
    parser = subparser(
        subparsers, "serve", "an HTTP service answering top-k requests",
        "Serve POST /recommend ({\"user\": ...} or {\"items\": [...]}, \"k\", \"exclude_seen\"), "
        "GET /health and the OpenAPI docs at /docs. Requests arriving together are scored as "
        "one batch. Needs the serve extra: pip install recbole-hybrid[serve].",
        _serve,
    )
    _model_arguments(parser)
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument("--max_batch", type=int, default=64,
                        help="most requests scored together (default 64; 1 turns batching off)")
    parser.add_argument("--max_wait_ms", type=float, default=2.0,
                        help="how long a batch waits for more requests (default 2 ms)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads for the model (default 1: the web server needs a core "
                        "too, and more threads than free cores slow torch down many times)")


def _serve(args, overrides):
    no_settings("serve", overrides)
    try:
        from recbole_hybrid.serving.http import serve
    except ImportError as error:
        raise UserError(f"serve needs FastAPI and uvicorn ({error}): pip install "
                        "'recbole-hybrid[serve]'") from None
    if args.max_batch < 1 or args.max_wait_ms < 0 or args.threads < 1:
        raise UserError("--max_batch and --threads must be at least 1, --max_wait_ms at least 0")
    from recbole_hybrid.utils.ports import check_port

    check_port(args.port, args.host, lowest=0)  # 0: any free port
    serve(_load(args), args.host, args.port, args.max_batch, args.max_wait_ms / 1000, args.threads)


def _load(args):
    from recbole_hybrid.serving.recommender import Recommender

    return Recommender.load(args.model_file, device=args.device, data_path=args.data_path,
                            trust_checkpoint=args.trust_checkpoint)
