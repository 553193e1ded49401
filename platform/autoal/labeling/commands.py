"""`autoal label init|next|import|status|export`, for `autoal.cli`: each command imports the project
only when it runs, so the CLI checks its arguments before torch loads."""
from __future__ import annotations


def _init(args) -> None:
    from autoal.labeling.project import LabelProject

    with LabelProject.create(args.dir, args.pool, args.classes, test=args.test, config_path=args.config,
                             strategy=args.strategy, cv_folds=args.cv_folds, embed=args.embed,
                             weights=args.weights) as project:
        print(project.status())
    print(f"next: autoal label next {args.dir}")


def _next(args) -> None:
    from autoal.labeling.project import LabelProject

    with LabelProject.open(args.dir) as project:
        files = project.next(batch=args.batch, strategy=args.strategy, log=lambda line: print(line, flush=True))
    print("queries: " + "  ".join(map(str, files)))
    print(f"fill the label column of {files[0]}, then: autoal label import {args.dir} {files[0]}")


def _import(args) -> None:
    from autoal.labeling.project import LabelProject

    with LabelProject.open(args.dir) as project:
        print(project.import_answers(args.file))


def _status(args) -> None:
    from autoal.labeling.project import LabelProject

    with LabelProject.open(args.dir) as project:
        print(project.status())


def _export(args) -> None:
    from autoal.labeling.export import export
    from autoal.labeling.project import LabelProject

    with LabelProject.open(args.dir) as project:
        print(f"labeled pool and latest model in {export(project, args.out)}")


def add_parser(sub) -> None:
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
    init.set_defaults(func=_init)
    nxt = commands.add_parser("next", help="train on the labels so far and write the next batch of queries")
    nxt.add_argument("dir")
    nxt.add_argument("--batch", type=int, help="queries in this batch (default: the config's batch)")
    nxt.add_argument("--strategy", help="query strategy for this batch (default: the project's)")
    nxt.set_defaults(func=_next)
    imp = commands.add_parser("import", help="import answers: the filled queries CSV or a Label Studio export")
    imp.add_argument("dir")
    imp.add_argument("file")
    imp.set_defaults(func=_import)
    status = commands.add_parser("status", help="labels per class, rounds, open queries, accuracy, curve")
    status.add_argument("dir")
    status.set_defaults(func=_status)
    export = commands.add_parser("export", help="write the labeled set as a Parquet pool, plus the latest model")
    export.add_argument("dir")
    export.add_argument("out")
    export.set_defaults(func=_export)
