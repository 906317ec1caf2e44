"""The ``nlpcal`` command: ``train``, ``bench``, ``demo`` and ``list``.

``nlpcal train --config recipes/<name>.yaml [--key value ...]`` runs one experiment: it reads every
field of :class:`~nlpcal.pipeline.ExperimentArguments` and :class:`~nlpcal.CalibrationArguments`
from the YAML/JSON file; flags after it override the file.

``nlpcal bench --recipe recipes/<name>.yaml [--output-dir DIR] [--no-resume]`` runs a benchmark
recipe (:mod:`nlpcal.bench`): every method × seed, in-domain and under shift, the seed ensembles,
and a report. Re-run with the same output folder, it resumes: finished cells are kept.

``nlpcal demo [--loss NAME]`` runs the embedded default recipe offline: all-MiniLM-L6-v2 on the
bundled SST-2 sample, cross-entropy and label smoothing with temperature scaling, two seeds, tested
in-domain and on IMDb, Yelp and Amazon sentences. ``--loss`` replaces the methods with that loss
and its post-hoc calibrator.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

DEMO_OUTPUT_DIR = "outputs/demo"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nlpcal", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="run one experiment from a YAML/JSON config")
    train.add_argument("--config", required=True, help="recipes/<name>.yaml")
    bench = sub.add_parser("bench", help="run a benchmark recipe: methods x seeds, under shift")
    bench.add_argument("--recipe", required=True, help="recipes/<name>.yaml")
    bench.add_argument("--output-dir", help="the run folder (default: outputs/bench/<recipe name>)")
    demo = sub.add_parser("demo", help="the embedded default benchmark, offline on CPU")
    demo.add_argument(
        "--loss", help="run this loss (see `nlpcal list`) instead of the demo's methods"
    )
    demo.add_argument("--output-dir", help=f"the run folder (default: {DEMO_OUTPUT_DIR}[_<loss>])")
    for command in (bench, demo):
        command.add_argument(
            "--resume",
            action=argparse.BooleanOptionalAction,
            default=True,
            help="keep the finished cells of an earlier run in the output folder (default); "
            "--no-resume deletes them and starts over",
        )
    sub.add_parser("list", help="list the registered losses and calibrators")
    args, rest = parser.parse_known_args(argv)
    if rest and args.command != "train":
        parser.error(f"unrecognized arguments: {' '.join(rest)}")

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.command == "list":
        from nlpcal.losses import list_losses
        from nlpcal.posthoc import list_calibrators

        print("losses:     ", ", ".join(list_losses()))
        print("calibrators:", ", ".join(list_calibrators()))
        return 0
    if args.command == "train":
        config = _read_config(args.config)
        if "methods" in config:
            parser.error(
                f"{args.config} is a benchmark recipe: run `nlpcal bench --recipe {args.config}`"
            )
        output_dir, report = _train(config, rest)
        print(Path(output_dir) / "report.md")
        print(report)
        return 0

    from nlpcal.bench import Method, demo_recipe, load_recipe, run_bench

    try:
        if args.command == "bench":
            recipe = load_recipe(args.recipe)
            output_dir = args.output_dir or f"outputs/bench/{recipe.name}"
        else:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            recipe = demo_recipe()
            output_dir = args.output_dir or DEMO_OUTPUT_DIR
            if args.loss:
                method = Method.from_dict({"calibration_loss": args.loss})
                recipe = dataclasses.replace(recipe, methods=(method,))
                output_dir = args.output_dir or f"{DEMO_OUTPUT_DIR}_{args.loss}"
    except (ValueError, FileNotFoundError) as err:
        parser.error(str(err))
    run_bench(recipe, output_dir, resume=args.resume)
    report = Path(output_dir) / "results.md"
    print(report)
    print(report.read_text())
    return 0


def _train(config: dict[str, Any], overrides: list[str]) -> tuple[str, str]:
    from nlpcal.pipeline import format_table, parse_config, run_experiment

    exp, training = parse_config(config, overrides=overrides)
    result = run_experiment(exp, training)
    return training.output_dir, format_table(
        result["table"], result["calibrator"], training.ece_bins
    )


def _read_config(path: str) -> dict[str, Any]:
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    text = file.read_text()
    if file.suffix in (".yaml", ".yml"):
        import yaml

        config = yaml.safe_load(text)
    else:
        config = json.loads(text)
    if not isinstance(config, dict):
        raise ValueError(f"{path} must hold a mapping of argument names to values")
    return config


if __name__ == "__main__":
    sys.exit(main())
