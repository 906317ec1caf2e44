"""The ``nlpcal`` command: ``train``, ``bench``, ``evaluate``, ``calibrate``, ``demo``, ``explain``
and ``list``.

``nlpcal train --config recipes/<name>.yaml [--method NAME] [--seed N] [--key value ...]`` runs one
method and one seed of a recipe (:mod:`nlpcal.bench`, the same runner, files and numbers as
``nlpcal bench``) and saves the calibrated model in ``cells/<method>/seed_<seed>/model``;
``--key value`` flags override the recipe's ``training`` section.

``nlpcal bench --recipe recipes/<name>.yaml [--output-dir DIR] [--no-resume]`` runs a benchmark
recipe (:mod:`nlpcal.bench`): every method × seed, in-domain and under shift, the seed ensembles,
and a report. Re-run with the same output folder, it resumes: finished cells are kept.

``nlpcal evaluate MODEL [--config RECIPE | --test [NAME=]SOURCE --shifted NAME=SOURCE ...]`` scores
a fine-tuned classifier as it is (a folder, a Hub id or a model saved by nlpcal), in-domain and under
shift, with the same report as a benchmark (a model saved by nlpcal also with each calibrator it
carries, as the variant ``saved_<variant>``); ``--posthoc NAME --calibration SOURCE`` adds post-hoc
calibrators. ``nlpcal calibrate MODEL --calibration SOURCE ...`` fits them (default: temperature
scaling), scores the model before and after, and saves the calibrated model (``--push-to-hub REPO``
uploads it). ``--drift-posthoc NAME [--drift-family corruption|gaussian|gradient]`` fits a
calibrator drift-aware, on the calibration data plus perturbed copies of it (the variant
``NAME_drift``). With ``--config`` the recipe's ``data`` section (and ``data_dir``, ``max_length``,
``label_map``, ``slicing.max_eval_samples``, ``robustness``) is used; its methods and training are
not. ``--pgd-budgets 0.01 0.05 [--pgd-norm linf] [--pgd-steps N] [--pgd-max-samples N]`` adds the
accuracy under PGD on the input embeddings at those relative budgets (a recipe's ``robustness``).

``nlpcal demo [--loss NAME]`` runs the embedded default recipe offline: all-MiniLM-L6-v2 on the
bundled SST-2 sample, cross-entropy and label smoothing with temperature scaling, two seeds, tested
in-domain and on IMDb, Yelp and Amazon sentences. ``--loss`` replaces the methods with that loss
and its post-hoc calibrator.

``nlpcal explain --model DIR --texts in_domain.txt ood.txt [--method NAME] [--html FILE]`` shows
why the model is unsure: each text's prediction with its tokens shaded by their attribution
(:mod:`nlpcal.explain`), one column per file, in the terminal and as a self-contained HTML page.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from pathlib import Path

DEMO_OUTPUT_DIR = "outputs/demo"
# Raised by nlpcal's checks of its input (config, recipe, names, data files; a Hub dataset
# offline), these are the user's errors; raised inside a dependency, they are bugs and keep
# their traceback.
_USER_ERRORS = (ValueError, FileNotFoundError, ConnectionError)
_PACKAGE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    """Run the ``nlpcal`` command; a user error (a bad config, recipe, argument or data file)
    exits with status 2 and one ``nlpcal: error: ...`` line on stderr, as argparse does."""
    from nlpcal.bench import recipe_keys

    parser = argparse.ArgumentParser(prog="nlpcal", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    recipe_help = {"epilog": recipe_keys(), "formatter_class": argparse.RawDescriptionHelpFormatter}
    train = sub.add_parser(
        "train",
        help="one method and one seed of a recipe; saves the calibrated model",
        description="Run one method and one seed of a recipe and save the calibrated model; "
        "--key value flags after the options override the recipe's training section.",
        **recipe_help,
    )
    train.add_argument("--config", "--recipe", dest="config", required=True, help="a recipe")
    train.add_argument("--method", help="the recipe's method to run (default: its only one)")
    train.add_argument("--seed", type=int, help="the seed to run (default: the recipe's only one)")
    train.add_argument("--output-dir", help="the run folder (default: outputs/train/<recipe name>)")
    bench = sub.add_parser(
        "bench", help="run a benchmark recipe: methods x seeds, under shift", **recipe_help
    )
    bench.add_argument("--recipe", required=True, help="recipes/<name>.yaml")
    bench.add_argument("--output-dir", help="the run folder (default: outputs/bench/<recipe name>)")
    bench.add_argument(
        "--methods",
        nargs="+",
        metavar="NAME",
        help="run (or, when finished, report) only these methods of the recipe; the others can "
        "follow in the same folder",
    )
    demo = sub.add_parser("demo", help="the embedded default benchmark, offline on CPU")
    demo.add_argument(
        "--loss", help="run this loss (see `nlpcal list`) instead of the demo's methods"
    )
    demo.add_argument("--output-dir", help=f"the run folder (default: {DEMO_OUTPUT_DIR}[_<loss>])")
    for command in (train, bench, demo):
        command.add_argument(
            "--resume",
            action=argparse.BooleanOptionalAction,
            default=True,
            help="keep the finished cells of an earlier run in the output folder (default); "
            "--no-resume deletes them and starts over",
        )
    evaluate = sub.add_parser(
        "evaluate",
        help="score a fine-tuned classifier as it is, in-domain and under shift",
        description="Score a fine-tuned classifier (folder or Hub id) on data in the recipe "
        "schema: from --config, or from --test/--shifted/--calibration.",
    )
    calibrate = sub.add_parser(
        "calibrate",
        help="fit post-hoc calibrators to a fine-tuned classifier and save it calibrated",
        description="Fit post-hoc calibrators to a fine-tuned classifier on --calibration data, "
        "score it before and after on the other sets, and save (or push) the calibrated model.",
    )
    for command, default in ((evaluate, "outputs/evaluate"), (calibrate, "outputs/calibrate")):
        command.add_argument("model", help="a *ForSequenceClassification folder or Hub id")
        command.add_argument("--config", help="a recipe whose data section to use")
        command.add_argument("--test", help="the in-domain test set: [NAME=]SOURCE")
        command.add_argument(
            "--shifted", action="append", default=[], help="a shifted set: NAME=SOURCE (repeat)"
        )
        command.add_argument("--calibration", help="held-out data to fit calibrators on")
        command.add_argument(
            "--posthoc",
            action="append",
            help="a post-hoc calibrator (repeat; default: "
            + ("none)" if command is evaluate else "temperature, unless --drift-posthoc)"),
        )
        command.add_argument(
            "--drift-posthoc",
            action="append",
            metavar="NAME",
            help="a post-hoc calibrator fitted drift-aware, on the calibration data and its "
            "perturbed copies (the variant NAME_drift; repeat)",
        )
        command.add_argument(
            "--drift-family",
            choices=["corruption", "gaussian", "gradient"],
            help="the perturbation of --drift-posthoc: corruption (text corruptions at "
            "severities 1-5, the default), gaussian or gradient (on the input embeddings); a "
            "recipe's data.calibration.drift.family",
        )
        command.add_argument(
            "--label-map",
            action="append",
            default=[],
            help="MODEL_CLASS=DATA_CLASS where the names differ beyond case (repeat)",
        )
        command.add_argument("--data-dir", help="the shared data folder, for shared: sources")
        command.add_argument("--max-length", type=int, help="most tokens per example")
        command.add_argument("--max-eval-samples", type=int, help="most rows of each set")
        command.add_argument("--batch-size", type=int, default=64, help="examples per batch")
        command.add_argument(
            "--no-saved-calibration",
            dest="saved_calibration",
            action="store_false",
            help="for a model saved by nlpcal, skip scoring the calibrators it carries "
            "(the variants saved_<variant>)",
        )
        command.add_argument("--output-dir", default=default, help=f"the run folder ({default})")
        command.add_argument(
            "--pgd-budgets",
            nargs="+",
            type=float,
            metavar="BUDGET",
            help="also measure the accuracy under PGD on the input embeddings at these relative "
            "budgets, strictly increasing, >= 0 (0: the clean accuracy); a recipe's "
            "robustness.budgets",
        )
        command.add_argument("--pgd-norm", help="l2 (default) or linf: robustness.norm")
        command.add_argument("--pgd-steps", type=int, help="PGD steps (10): robustness.steps")
        command.add_argument(
            "--pgd-max-samples",
            type=int,
            help="most rows of each set attacked (default: all): robustness.max_samples",
        )
    calibrate.add_argument("--push-to-hub", metavar="REPO", help="upload the calibrated model")
    explain = sub.add_parser(
        "explain",
        help="why is the model unsure: token attributions of texts, as text and HTML",
        description="Explain the model's prediction on each text: its tokens shaded by their "
        "attribution, one column per file.",
    )
    explain.add_argument("--model", required=True, help="a classifier folder (with tokenizer)")
    explain.add_argument(
        "--texts",
        nargs="+",
        required=True,
        metavar="FILE",
        help="text files, one text per line, optionally 'text<TAB>label'; one column each",
    )
    explain.add_argument(
        "--method", default="attention_gradient", help="an attribution method (`nlpcal list`)"
    )
    explain.add_argument("--max-texts", type=int, default=8, help="texts per file (default 8)")
    explain.add_argument("--html", help="also write the heat map to this HTML file")
    explain.add_argument(
        "--color",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="shade tokens with ANSI colours (default: when printing to a terminal)",
    )
    sub.add_parser("list", help="list the registered losses, calibrators and attributions")
    args, rest = parser.parse_known_args(argv)
    if rest and args.command != "train":
        parser.error(f"unrecognized arguments: {' '.join(rest)}")

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        _run(args, rest)
    except OSError as err:  # nlpcal's own Hub errors (no network, no token) are the user's too
        if not isinstance(err, (*_USER_ERRORS, _hub_error())) or not _raised_by_nlpcal(err):
            raise
        parser.exit(2, f"{parser.prog}: error: {' '.join(str(err).split())}\n")
    except _USER_ERRORS as err:
        if not _raised_by_nlpcal(err):
            raise
        parser.exit(2, f"{parser.prog}: error: {' '.join(str(err).split())}\n")
    return 0


def _run(args: argparse.Namespace, rest: list[str]) -> None:
    if args.command == "list":
        from nlpcal.explain import list_attributions
        from nlpcal.losses import list_losses
        from nlpcal.posthoc import list_calibrators

        print("losses:     ", ", ".join(list_losses()))
        print("calibrators:", ", ".join(list_calibrators()))
        print("attributions:", ", ".join(list_attributions()))
        return
    if args.command == "explain":
        _explain(args)
        return
    if args.command in ("evaluate", "calibrate"):
        _existing_model(args)
        return
    from nlpcal.bench import Method, demo_recipe, load_recipe, run_bench, single_cell

    if args.command == "train":
        recipe = load_recipe(args.config, training=_flag_pairs(rest))
        recipe = single_cell(recipe, args.method, args.seed)
        output_dir = args.output_dir or f"outputs/train/{recipe.name}"
    elif args.command == "bench":
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
    from nlpcal.bench.report import headline

    methods = getattr(args, "methods", None)
    results = run_bench(recipe, output_dir, resume=args.resume, methods=methods)
    report = Path(output_dir) / "results.md"
    print(f"\n{headline(results)}\nFull report: {report} (and report.html beside it)\n")
    print(report.read_text())


def _existing_model(args: argparse.Namespace) -> None:
    """``nlpcal evaluate`` and ``nlpcal calibrate``: the runner on a model as it is."""
    from nlpcal.bench.existing import default_posthoc, existing_model_recipe, model_folder
    from nlpcal.bench.recipe import DriftSpec, read_recipe_file
    from nlpcal.bench.report import headline
    from nlpcal.bench.run import run_bench

    options: dict = {}
    robustness = None
    if args.config:
        if args.test or args.shifted or args.calibration:
            raise ValueError("give the data with --config or with --test/--shifted/--calibration")
        config = read_recipe_file(args.config)
        if "data" not in config:
            raise ValueError(f"{args.config}: no data section")
        data = config["data"]
        options = {k: config[k] for k in ("data_dir", "max_length", "label_map") if k in config}
        robustness = config.get("robustness")
        slicing = config.get("slicing") or {}
        if slicing.get("max_eval_samples") is not None:
            options["max_eval_samples"] = slicing["max_eval_samples"]
    else:
        if not args.test:
            raise ValueError("name the in-domain test set with --test [NAME=]SOURCE, or --config")
        name, _, source = args.test.rpartition("=")
        data = {
            "test": {"name": name or "test", "source": source},
            "shifted": [_named_source(spec, "--shifted") for spec in args.shifted],
        }
        if args.calibration:
            data["calibration"] = args.calibration
    drift_posthoc = args.drift_posthoc or []
    posthoc = args.posthoc or ([] if args.command == "evaluate" else None)
    if args.command == "calibrate":
        posthoc = default_posthoc(posthoc, drift_posthoc)
    if (posthoc or drift_posthoc) and "calibration" not in data:
        raise ValueError("post-hoc calibrators need held-out data: give --calibration SOURCE")
    if args.drift_family is not None:
        if not drift_posthoc:
            raise ValueError("--drift-family is the perturbation of --drift-posthoc: name one")
        calibration = data["calibration"]
        if not isinstance(calibration, dict):
            calibration = {"source": calibration}
        keep = {"seed", *DriftSpec.family_keys(args.drift_family)}  # not the other family's
        drift = {k: v for k, v in (calibration.get("drift") or {}).items() if k in keep}
        drift = {**drift, "family": args.drift_family}
        data = {**data, "calibration": {**calibration, "drift": drift}}
    if args.label_map:
        options["label_map"] = dict(
            _named_source(p, "--label-map").values() for p in args.label_map
        )
    for key in ("data_dir", "max_length", "max_eval_samples"):
        if getattr(args, key) is not None:
            options[key] = getattr(args, key)
    attack = {
        key: getattr(args, f"pgd_{key}")
        for key in ("budgets", "norm", "steps", "max_samples")
        if getattr(args, f"pgd_{key}") is not None
    }
    if attack:
        if robustness is not None and not isinstance(robustness, dict):
            raise ValueError(f"{args.config}: robustness must be a mapping, got {robustness!r}")
        robustness = {**(robustness or {}), **attack}
        if "budgets" not in robustness:
            raise ValueError(
                "--pgd-norm, --pgd-steps and --pgd-max-samples need the budgets: give them with "
                "--pgd-budgets"
            )
    if robustness is not None:
        options["robustness"] = robustness
    recipe = existing_model_recipe(
        args.model,
        data,
        posthoc=posthoc,
        drift_posthoc=drift_posthoc,
        batch_size=args.batch_size,
        name=args.command,
        save_model=args.command == "calibrate",
        saved_calibration=args.saved_calibration,
        **options,
    )
    results = run_bench(recipe, args.output_dir, resume=False)
    report = Path(args.output_dir) / "results.md"
    print(f"\n{headline(results)}\nFull report: {report} (and report.html beside it)")
    if args.command == "calibrate":
        folder = model_folder(recipe, args.output_dir)
        print(f"Calibrated model: {folder} (load it with nlpcal.load_calibrated)")
        if args.push_to_hub:
            from nlpcal.hub import load_calibrated

            commit = load_calibrated(folder).push_to_hub(args.push_to_hub)
            print(f"Pushed to {getattr(commit, 'commit_url', args.push_to_hub)}")


def _named_source(spec: str, flag: str) -> dict[str, str]:
    name, sep, value = spec.partition("=")
    if not sep or not name or not value:
        raise ValueError(f"{flag} takes NAME=VALUE, got {spec!r}")
    return {"name": name, "source": value}


def _explain(args: argparse.Namespace) -> None:
    """``nlpcal explain``: read the text files, explain, print and optionally write HTML."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    from nlpcal._io import write_text_atomic
    from nlpcal.data.prepare import resolve_model_path
    from nlpcal.explain import create_attribution, explain_texts, render_html, render_terminal

    if args.max_texts < 1:
        raise ValueError(f"--max-texts must be >= 1, got {args.max_texts}")
    create_attribution(args.method)  # an unknown name fails before anything loads
    names = [Path(f).name for f in args.texts]
    if len(set(names)) != len(names):
        raise ValueError(f"--texts files name the columns, so their names must differ: {names}")
    path = resolve_model_path(args.model)
    config = AutoConfig.from_pretrained(path)
    id2label = {int(k): v for k, v in (config.id2label or {}).items()}
    label_names = [id2label.get(k, str(k)) for k in range(config.num_labels)]
    inputs = {
        n: _read_texts(Path(f), label_names, args.max_texts)
        for n, f in zip(names, args.texts, strict=True)
    }
    model = AutoModelForSequenceClassification.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    groups = {
        name: explain_texts(model, tokenizer, texts, labels=labels, method=args.method)
        for name, (texts, labels) in inputs.items()
    }
    color = sys.stdout.isatty() if args.color is None else args.color
    for name, explanations in groups.items():
        print(f"== {name}\n{render_terminal(explanations, color=color, label_names=label_names)}\n")
    if args.html:
        write_text_atomic(args.html, render_html(groups, label_names=label_names))
        print(f"wrote {args.html}")


def _read_texts(
    path: Path, label_names: list[str], limit: int
) -> tuple[list[str], list[int] | None]:
    """Up to ``limit`` non-empty lines of ``path``: ``text`` or ``text<TAB>label`` (a class
    number or name); labels are returned only if every line has one."""
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not lines:
        raise ValueError(f"{path} has no text: expected one text per line")
    texts, labels = [], []
    for number, line in enumerate(lines[:limit], start=1):
        text, _, label = line.partition("\t")
        texts.append(text.strip())
        if label.strip():
            label = label.strip()
            if label.isdigit() and int(label) < len(label_names):
                labels.append(int(label))
            elif label in label_names:
                labels.append(label_names.index(label))
            else:
                raise ValueError(
                    f"{path}, line {number}: label {label!r} is neither a class number below "
                    f"{len(label_names)} nor one of the model's labels {label_names}"
                )
    return texts, labels if len(labels) == len(texts) else None


def _flag_pairs(flags: list[str]) -> dict[str, str]:
    """``--key value`` pairs as a mapping (values typed later, as the recipe's are)."""
    if len(flags) % 2 or not all(f.startswith("--") for f in flags[::2]):
        raise ValueError(
            f"expected --key value pairs after the recipe's options, got {' '.join(flags)!r}"
        )
    return {
        key.removeprefix("--"): value for key, value in zip(flags[::2], flags[1::2], strict=True)
    }


def _hub_error() -> type[OSError]:
    from nlpcal.hub import HubError

    return HubError


def _raised_by_nlpcal(err: BaseException) -> bool:
    """Whether ``err`` was raised in nlpcal's own code: the innermost frame of its traceback."""
    tb = err.__traceback__
    while tb.tb_next is not None:
        tb = tb.tb_next
    return Path(tb.tb_frame.f_code.co_filename).resolve().is_relative_to(_PACKAGE)


if __name__ == "__main__":
    sys.exit(main())
