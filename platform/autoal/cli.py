"""`autoal`: run experiments, sweeps and reports; label data (files or a Label Studio backend); list strategies
and datasets; prepare pools.

User errors (AutoALError) and failed file operations (OSError: a read-only or
full disk, a path under a file) print one line and exit 2, never a traceback.
The config is checked before torch and Ray are imported, so a typo is reported
at once.
"""
from __future__ import annotations

import argparse
import dataclasses
import errno
import sys
import types
from pathlib import Path
from typing import get_args, get_origin, get_type_hints

import yaml

from autoal import config
from autoal.errors import AutoALError
from autoal.safe_io import MESSAGE_CHARS, load_yaml, one_line, shown


def _config_flags(run: argparse.ArgumentParser) -> list[str]:
    """One flag per config key, generated from the config dataclasses: `--initial-method` sets
    `initial_method`, `--search.lam` sets `search.lam`; returns the config keys they set."""
    keys = []
    for cls, prefix in ((config.ExperimentConfig, ""), (config.SearchConfig, "search.")):
        hints = get_type_hints(cls)
        for f in dataclasses.fields(cls):
            hint = hints[f.name]
            if dataclasses.is_dataclass(hint) or get_origin(hint) is dict:
                continue   # a section: its keys have their own flags, or take --set
            item = get_args(hint)[0] if get_origin(hint) is tuple else hint
            name = f.metadata["flag"] or f.name
            kind = dict(type=_number_or_auto) if isinstance(item, types.UnionType) else dict(type=_bool) if item is bool \
                else dict(type=item)
            many = get_origin(hint) is tuple   # a list flag given twice adds to it; a scalar's last value wins
            old = [f"--{prefix}{f.metadata['old'].replace('_', '-')}"] if f.metadata["old"] else []
            run.add_argument("--" + prefix + name.replace("_", "-"), *old, dest=prefix + f.name,
                             metavar="true|false" if item is bool else name.upper(), action=Extend if many else "store",
                             nargs="+" if many else None, help=f.metadata["help"], **kind)
            keys.append(prefix + f.name)
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="any config key, dotted, with a YAML value: --set options.poal.iterations=500")
    return keys


def _overrides(args) -> dict:
    """The config keys the flags set; flags win over the YAML file."""
    overrides = {key: getattr(args, key) for key in args.config_keys if getattr(args, key) is not None}
    for item in args.set:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise AutoALError(f"--set takes KEY=VALUE, got {shown(item)}")
        try:
            overrides[key] = load_yaml(text)
        except yaml.YAMLError as exc:
            raise AutoALError(f"--set {key}: the value is not YAML: {config.yaml_problem(exc)}") from None
    return overrides


def _run(args) -> None:
    cfg = config.load(args.config, _overrides(args))
    out = Path(args.out or Path("runs") / (Path(args.config).stem if args.config else cfg.dataset))
    for parent in out.parents:
        if parent.exists() and not parent.is_dir():
            raise AutoALError(f"output {out} lies under {parent}, which is a file, not a directory")

    from autoal.engine.experiment import Experiment
    from autoal.runs.metrics import format_table, summary

    print(f"autoal: {cfg.dataset}, strategies {', '.join(cfg.strategies)}, seeds {list(cfg.seeds)}, "
          f"{cfg.rounds} rounds of {cfg.batch} after {cfg.initial} -> {out}", flush=True)
    experiment = Experiment.prepare(cfg, out, log=lambda line: print(line, flush=True), download=args.download)
    results = experiment.run()
    results = results[results["strategy"].isin(cfg.strategies) & results["seed"].isin(cfg.seeds)]
    print("\n" + format_table(summary(results)))
    print(f"\nresults: {out / 'results.csv'}  ledger: {out / 'ledger.parquet'}  curves: {out / 'curves.png'}")


def _strategies(args) -> None:
    import inspect

    from autoal.strategies import get, names

    for name in names():
        strategy = get(name)
        options = [f"{p.name}={p.default!r}" for p in inspect.signature(type(strategy)).parameters.values()]
        print(f"{name:<18} needs: {', '.join(sorted(strategy.needs)) or '-'}"
              + (f"; options: {', '.join(options)}" if options else ""))


def _datasets(args) -> None:
    from autoal.data.datasets import sources

    for name, summary in sources():
        print(f"{name:<12} {summary}")


def _prepare(args) -> None:
    from autoal.data.datasets import prepare

    out = prepare(args.source, args.data_root, args.out_dir, download=args.download,
                  log=lambda line: print(line, flush=True))
    print(f"wrote {args.source} as Parquet pool to {out}")


def _embed(args) -> None:
    from autoal.compute.embed import embed
    from autoal.labeling.pool import parse_classes

    result = embed(args.source, args.out, args.backbone, weights=args.weights, download=args.download,
                   dtype=args.dtype, actors=args.actors, gpus=args.gpus, batch_size=args.batch_size,
                   shard_rows=args.shard_rows, data_root=args.data_root,
                   classes=args.classes and parse_classes(args.classes), log=lambda line: print(line, flush=True))
    steady = f", {result.steady:,.1f} after start-up" if result.steady else ""
    print(f"embedded {result.rows:,} rows in {result.seconds:.1f} s ({result.rows_per_s:,.1f} rows/s{steady})"
          + (f"; {result.skipped} shards were already written" if result.skipped else "")
          + f": parquet:{result.out}")


def _report(args) -> None:
    from autoal.report import report

    print(report(args.path, plots=args.plots))


def _sweep(args) -> None:
    from autoal.sweep.runner import run_sweep

    out = run_sweep(args.plan, args.out, args.storage, log=lambda line: print(line, flush=True))
    print(f"sweep results in {out}")


def _label_init(args) -> None:
    from autoal.labeling.project import LabelProject

    with LabelProject.create(args.dir, args.pool, args.classes, test=args.test, config_path=args.config,
                             strategy=args.strategy, cv_folds=args.cv_folds, embed=args.embed,
                             weights=args.weights) as project:
        print(project.status())
    print(f"next: autoal label next {args.dir}")


def _label_next(args) -> None:
    from autoal.labeling.project import LabelProject

    with LabelProject.open(args.dir) as project:
        files = project.next(batch=args.batch, strategy=args.strategy, log=lambda line: print(line, flush=True))
    print("queries: " + "  ".join(map(str, files)))
    print(f"fill the label column of {files[0]}, then: autoal label import {args.dir} {files[0]}")


def _label_import(args) -> None:
    from autoal.labeling.project import LabelProject

    with LabelProject.open(args.dir) as project:
        print(project.import_answers(args.file))


def _label_status(args) -> None:
    from autoal.labeling.project import LabelProject

    with LabelProject.open(args.dir) as project:
        print(project.status())


def _label_export(args) -> None:
    from autoal.labeling.export import export
    from autoal.labeling.project import LabelProject

    with LabelProject.open(args.dir) as project:
        print(f"labeled pool and latest model in {export(project, args.out)}")


def _serve(args) -> None:
    from autoal.studio.client import StudioClient, api_key
    from autoal.studio.serve import run

    if (args.connect is None) != (args.label_studio is None):
        raise AutoALError("--connect PROJECT_ID and --label-studio URL go together: the Label Studio project "
                          "to connect to, and where its server is")
    studio = None if args.connect is None else StudioClient(args.label_studio, api_key(args.api_key_file),
                                                            args.connect)
    run(args.dir, args.host, args.port, args.retrain_every, studio, log=lambda line: print(line, flush=True))


def _serve_parser(sub) -> None:
    srv = sub.add_parser("serve", help="serve a labeling project as a Label Studio ML backend (Ray Serve)")
    srv.add_argument("dir", help="a project made by `autoal label init`")
    srv.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    srv.add_argument("--port", type=int, default=9090)
    srv.add_argument("--retrain-every", type=int, default=10, metavar="N", help="train a new round after N answers")
    srv.add_argument("--label-studio", metavar="URL", help="the Label Studio server, e.g. http://localhost:8080")
    srv.add_argument("--connect", type=int, metavar="PROJECT_ID",
                     help="add this backend and its webhook to that Label Studio project through its API")
    srv.add_argument("--api-key-file", help="Label Studio's API key (default: $LABEL_STUDIO_API_KEY)")
    srv.set_defaults(func=_serve)


def _label_parser(sub) -> None:
    """`autoal label init|next|import|status|export`: a person answers the queries."""
    label = sub.add_parser("label", help="label your own data: a person answers each round's queries")
    commands = label.add_subparsers(dest="label_command", required=True)
    init = commands.add_parser("init", help="start a labeling project on a pool")
    init.add_argument("dir", help="the project directory (new or empty)")
    init.add_argument("--pool", required=True, help="images:<dir>[@<size>], parquet:<dir>, or any dataset reference")
    init.add_argument("--classes", required=True, help="class names, comma-separated (class folders use them)")
    init.add_argument("--test", help="a fully labeled pool to measure accuracy on (default: cross-validation)")
    init.add_argument("--config", help="YAML experiment config: model, epochs, batch, scoring_tasks, workers, ...")
    init.add_argument("--strategy", default="entropy", help="query strategy (see `autoal strategies`)")
    init.add_argument("--cv-folds", type=int, default=3,
                      help="without --test, estimate accuracy by k-fold cross-validation (0: no estimate)")
    init.add_argument("--embed", metavar="BACKBONE", help="embed the images once with a pretrained backbone "
                      "(resnet18, resnet50, convnext_tiny, vit_b_16): every round trains a head in seconds")
    init.add_argument("--weights", help="with --embed: a local state dict of the backbone")
    init.set_defaults(func=_label_init)
    nxt = commands.add_parser("next", help="train on the labels so far and write the next batch of queries")
    nxt.add_argument("dir")
    nxt.add_argument("--batch", type=int, help="queries in this batch (default: the config's batch)")
    nxt.add_argument("--strategy", help="query strategy for this batch (default: the project's)")
    nxt.set_defaults(func=_label_next)
    imp = commands.add_parser("import", help="import answers: the filled queries CSV or a Label Studio export")
    imp.add_argument("dir")
    imp.add_argument("file")
    imp.set_defaults(func=_label_import)
    status = commands.add_parser("status", help="labels per class, rounds, open queries, accuracy, curve")
    status.add_argument("dir")
    status.set_defaults(func=_label_status)
    export = commands.add_parser("export", help="write the labeled set as a Parquet pool, plus the latest model")
    export.add_argument("dir")
    export.add_argument("out")
    export.set_defaults(func=_label_export)


class Extend(argparse.Action):
    """A list flag: `--strategy a --strategy b` means both, as `--strategy a b` does."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, [*(getattr(namespace, self.dest, None) or []), *values])


class Parser(argparse.ArgumentParser):
    """argparse that reports a usage error as one `autoal: error:` line (exit 2), not a usage block."""

    def error(self, message: str):
        raise AutoALError(f"{self.prog.removeprefix('autoal').strip() or 'autoal'}: {message}"
                          f"; see `{self.prog} --help`")


def parser() -> argparse.ArgumentParser:
    p = Parser(prog="autoal", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run an active-learning experiment (resumes an existing --out)")
    run.add_argument("config", nargs="?", help="YAML experiment config; flags override it")
    run.add_argument("--download", action="store_true", help="download missing dataset files")
    run.set_defaults(config_keys=_config_flags(run))
    run.add_argument("--out", help="experiment directory (default: runs/<config name or dataset>)")
    run.set_defaults(func=_run)

    sub.add_parser("strategies", help="list the registered strategies").set_defaults(func=_strategies)
    sub.add_parser("datasets", help="list the pool sources").set_defaults(func=_datasets)

    prep = sub.add_parser("prepare", help="convert a source to a Parquet pool (for clusters)")
    prep.add_argument("source")
    prep.add_argument("out_dir")
    prep.add_argument("--data-root", default="data")
    prep.add_argument("--download", action="store_true")
    prep.set_defaults(func=_prepare)

    emb = sub.add_parser("embed", help="embed images through a pretrained backbone into a Parquet pool "
                                       "(resumes an interrupted OUT)")
    emb.add_argument("source", help="dataset reference: images:<dir>, parquet:<dir>, cifar10, medmnist:<flag>, ...")
    emb.add_argument("out", help="directory or URI (s3://, gs://) of the embedding pool")
    emb.add_argument("--backbone", default="resnet18", help="resnet18, resnet50, convnext_tiny or vit_b_16")
    emb.add_argument("--weights", help="a local state dict of the backbone (default: torchvision's published "
                                       "weights from torch's cache)")
    emb.add_argument("--download", action="store_true", help="download missing weights and dataset files")
    emb.add_argument("--dtype", default="float32", help="float32 or float16 embeddings")
    emb.add_argument("--actors", type=int, default=1, help="embedding actors (one model each)")
    emb.add_argument("--gpus", type=float, default=0.0, help="GPUs per actor")
    emb.add_argument("--batch-size", type=int, default=32, help="images per forward pass")
    emb.add_argument("--shard-rows", type=int, default=4096, help="rows per output file (a Parquet source keeps "
                                                                   "its row groups)")
    emb.add_argument("--classes", help="with images:<dir>: the class names, comma-separated (default: the "
                                       "class folders')")
    emb.add_argument("--data-root", default="data")
    emb.set_defaults(func=_embed)

    rep = sub.add_parser("report", help="summary table and plots of a run or sweep directory")
    rep.add_argument("path")
    rep.add_argument("--plots", help="write the plots here (default: next to the results, when writable)")
    rep.set_defaults(func=_report)

    sw = sub.add_parser("sweep", help="run a Ray Tune sweep of experiments from a plan (a YAML file)")
    sw.add_argument("plan")
    sw.add_argument("--out", help="sweep directory (default: runs/<plan name>)")
    sw.add_argument("--storage", help="Tune storage path or URI (default: <out>/tune)")
    sw.set_defaults(func=_sweep)
    _label_parser(sub)
    _serve_parser(sub)
    return p


def _bool(text: str) -> bool:
    if text.lower() not in ("true", "false"):
        raise argparse.ArgumentTypeError(f"expected true or false, got {shown(text)}")
    return text.lower() == "true"


def _number_or_auto(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer or auto, got {shown(text)}") from None


# what to do about a failed file operation, by errno
OS_HINTS = {errno.ENOSPC: "free some space and re-run the same command: finished rounds are kept",
            errno.EDQUOT: "free some space and re-run the same command: finished rounds are kept",
            errno.EROFS: "the filesystem is read-only; choose a writable --out",
            errno.EACCES: "choose a path you may write to",
            errno.ENOTDIR: "a part of the path is a file, not a directory",
            errno.EEXIST: "a file is in the way of a directory"}


def _os_error(exc: OSError) -> str:
    path = exc.filename if exc.filename2 is None else f"{exc.filename} -> {exc.filename2}"
    hint = OS_HINTS.get(exc.errno)
    return (f"{path}: " if path else "") + f"{exc.strerror or exc}" + (f"; {hint}" if hint else "")


def main(argv: list[str] | None = None) -> int:
    try:
        args = parser().parse_args(argv)
        args.func(args)
    except AutoALError as exc:
        print(f"autoal: error: {one_line(exc, MESSAGE_CHARS - 15)}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"autoal: error: {one_line(_os_error(exc), MESSAGE_CHARS - 15)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("autoal: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
