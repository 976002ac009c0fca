"""Command line: `python -m keras_mtl {train,evaluate,predict,demo,export}`."""

import argparse
import logging
import sys

import pandas as pd

from keras_mtl import runner

DEMO_CONFIG = {
    "dataset": {"name": "funnel", "n": 300_000, "seed": 0},
    "model": {"architecture": "mmoe"},
    "training": {
        "epochs": 4,
        "batch_size": 1024,
        "early_stopping_patience": 1,
    },
    "output_dir": "runs/demo",
}


def _overrides(args):
    """Flags that override the config file (only those given)."""
    config = {}
    dataset = {}
    if args.dataset:
        dataset["name"] = args.dataset
    if args.data_path:
        dataset["path"] = args.data_path
    if args.n is not None:
        dataset["n"] = args.n
    if dataset:
        config["dataset"] = dataset
    if args.architecture:
        config["model"] = {"architecture": args.architecture}
    training = {
        key: value
        for key, value in (
            ("epochs", args.epochs),
            ("batch_size", args.batch_size),
            ("learning_rate", args.learning_rate),
            ("seed", args.seed),
            ("steps_per_epoch", getattr(args, "steps_per_epoch", None)),
            ("checkpoint_dir", getattr(args, "checkpoint_dir", None)),
            ("checkpoint_every", getattr(args, "checkpoint_every", None)),
        )
        if value is not None
    }
    if getattr(args, "distributed", False):
        training["distributed"] = True
    if training:
        config["training"] = training
    if args.output_dir:
        config["output_dir"] = args.output_dir
    return config


def _config(args, base=None):
    config = dict(base or {})
    if getattr(args, "config", None):
        config = runner._merge(config, runner.load_config_file(args.config))
    return runner._merge(config, _overrides(args))


def print_report(report, title):
    with pd.option_context(
        "display.float_format", "{:.4f}".format, "display.width", 120
    ):
        print(f"\n{title}")
        print(report.to_string())


def _add_run_flags(parser):
    parser.add_argument("--config", help="YAML or JSON run config")
    parser.add_argument(
        "--dataset",
        choices=sorted(runner.DATASET_FIELDS),
        help="built-in or file dataset",
    )
    parser.add_argument("--data-path", help="path (or glob) of the data")
    parser.add_argument("--n", type=int, help="rows of a synthetic dataset")
    parser.add_argument("--architecture", help="model builder name")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--learning-rate", type=float)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--output-dir", help="where the run is saved")


def _add_distributed_flags(parser):
    parser.add_argument(
        "--distributed",
        action="store_true",
        help="train with keras_mtl.distribute on the strategy TF_CONFIG "
        "describes (MultiWorkerMirroredStrategy for 2+ tasks, else "
        "MirroredStrategy); same as `training: {distributed: true}`",
    )
    parser.add_argument(
        "--steps-per-epoch",
        type=int,
        help="steps per epoch (required with --distributed on files)",
    )
    parser.add_argument(
        "--checkpoint-dir",
        help="shared checkpoint directory of --distributed "
        "(default: OUTPUT_DIR/checkpoints); a restarted job resumes there",
    )
    parser.add_argument(
        "--checkpoint-every",
        type=int,
        help="checkpoint every N steps with --distributed (default: 100)",
    )


def build_parser():
    parser = argparse.ArgumentParser(
        prog="keras-mtl", description="Multi-task ranking models in Keras 3."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train a model from a config or flags")
    _add_run_flags(p)
    _add_distributed_flags(p)
    p = sub.add_parser(
        "demo", help="train the default MMoE on built-in funnel data"
    )
    _add_run_flags(p)
    p = sub.add_parser("evaluate", help="per-task metrics of a saved run")
    p.add_argument("--model-dir", required=True)
    _add_run_flags(p)
    p = sub.add_parser("predict", help="score a CSV/Parquet file")
    p.add_argument("--model-dir", required=True)
    p.add_argument("--input", required=True, help="CSV or Parquet file")
    p.add_argument("--output", required=True, help="CSV to write")
    p.add_argument(
        "--keep-columns",
        default="",
        help="comma-separated input columns copied to the output",
    )
    p = sub.add_parser(
        "export", help="export a saved run for TF Serving (SavedModel)"
    )
    p.add_argument("--model-dir", required=True, help="a run saved by train")
    p.add_argument(
        "--base-dir", required=True, help="TF Serving base path of the model"
    )
    p.add_argument("--version", type=int, help="default: the next integer")
    p.add_argument(
        "--fusion",
        help="score fusion: JSON, a .json file, or 'click=1,conversion=0.5'",
    )
    p.add_argument(
        "--split",
        action="store_true",
        help="add user_embedding / score_items signatures",
    )
    p.add_argument(
        "--example-signatures",
        action="store_true",
        help="add classify_/regress_ signatures over tf.Example",
    )
    p.add_argument(
        "--no-warmup", action="store_true", help="skip the warmup requests"
    )
    p = sub.add_parser(
        "tune", help="KerasTuner search (see keras_mtl.tuning, tuning/)"
    )
    p.add_argument("--config", required=True, help="YAML or JSON config")
    p.add_argument("--algorithm", choices=("random", "bayesian", "hyperband"))
    p.add_argument("--max-trials", type=int)
    p.add_argument("--output-dir", help="search directory (resumable)")
    p.add_argument(
        "--overwrite", action="store_true", help="restart, not resume"
    )
    p.add_argument("--verbose", type=int, default=1, choices=(0, 1, 2))
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.command in ("train", "demo"):
            base = DEMO_CONFIG if args.command == "demo" else None
            config = _config(args, base)
            _, report, out = runner.train(config)
            if report is not None:
                print_report(report, "Per-task metrics (held-out rows):")
            if out is None:
                print("\nWorker done; the chief saves the run.")
            else:
                print(f"\nSaved model, specs and metrics.json to {out}/")
        elif args.command == "evaluate":
            override = _overrides(args)
            if args.config:
                override = runner._merge(
                    runner.load_config_file(args.config), override
                )
            report = runner.evaluate(args.model_dir, override or None)
            print_report(report, "Per-task metrics:")
        elif args.command == "predict":
            keep = [c for c in args.keep_columns.split(",") if c]
            rows = runner.predict(
                args.model_dir, args.input, args.output, keep_columns=keep
            )
            print(f"Scored {rows} rows into {args.output}")
        elif args.command == "export":
            from keras_mtl import export as export_lib

            model, features, tasks, _ = runner.load_run(args.model_dir)
            path = export_lib.export_for_serving(
                model,
                args.base_dir,
                version=args.version,
                fusion=export_lib.parse_fusion(args.fusion),
                warmup=not args.no_warmup,
                split=args.split,
                example_signatures=args.example_signatures,
                tasks=tasks,
                features=features,
            )
            print(f"Exported version {path.name} to {path}")
        elif args.command == "tune":
            from keras_mtl.tuning import search

            search.main(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"keras-mtl {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0
