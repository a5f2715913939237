"""The ``onnxopt`` command line: optimize, compare, inspect, passes, unpack.

Exit codes: 0 success, 2 bad usage or bad input (one-line message, no traceback unless
``--debug``), 1 internal error. Option defaults are ``None`` so the library's defaults stay the
single source of truth.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path
from typing import Any, Sequence

from onnxopt.errors import OnnxoptError, PostconditionError

logger = logging.getLogger(__name__)


def _at_least(minimum: int) -> Any:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is below the minimum {minimum}")
        return value
    return parse


def _add_runtime_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("measurement")
    group.add_argument("--provider", action="append", default=None,
                       help="onnxruntime execution provider (repeatable; default CPUExecutionProvider)")
    group.add_argument("--threads", type=_at_least(1), default=None,
                       help="intra-op threads for measurements (default 1)")
    group.add_argument("--batch-size", type=_at_least(1), default=None, help="batch size for data (default 32)")
    group.add_argument("--latency-runs", type=_at_least(0), default=None,
                       help="paired latency runs (default 50; 0: no latency)")
    group.add_argument("--seed", type=int, default=None, help="seed for random data and passes (default 0)")
    group.add_argument("--preprocess", default=None,
                       help="image folder preprocessing, e.g. resize=256,crop=224,scale=0.00392,order=RGB")
    group.add_argument("--dim", action="append", default=None, metavar="NAME=N",
                       help="value of a dynamic input dimension for random data (repeatable)")


def _add_output_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("report")
    group.add_argument("--json", action="store_true", help="print the report as JSON instead of tables")
    group.add_argument("--report", type=Path, default=None, help="also write the JSON report to this file")
    group.add_argument("--no-progress", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="onnxopt", description="ONNX post-training optimizer with measured deltas")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what each pass does")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("optimize", help="run passes on a model, write it, report the deltas")
    p.add_argument("model", type=Path)
    p.add_argument("-o", "--output", type=Path, default=None, help="output model (default: MODEL.opt.onnx)")
    p.add_argument("--pass", dest="passes", action="append", default=None, metavar="NAME[:KEY=VALUE...]",
                   help="a pass and its settings, in order (repeatable), e.g. int8:method=entropy")
    p.add_argument("--recipe", type=Path, default=None, help="TOML file with [[pass]] tables")
    p.add_argument("--calib", default=None, help="calibration data: .npz, .npy folder, test_data_set folders, images")
    p.add_argument("--eval", dest="evaluation", default=None,
                   help="evaluation data (with labels for accuracy); 'random' for latency only (default)")
    p.add_argument("--no-eval", action="store_true",
                   help="write the model without comparing it to the original (no accuracy or latency)")
    _add_runtime_args(p)
    _add_output_args(p)

    c = sub.add_parser("compare", help="measure accuracy, agreement, errors, latency, size of B against A")
    c.add_argument("model_a", type=Path)
    c.add_argument("model_b", type=Path)
    c.add_argument("--data", default=None, help="evaluation data; default random inputs (latency only)")
    _add_runtime_args(c)
    _add_output_args(c)

    i = sub.add_parser("inspect", help="op histogram, parameters, MACs, opsets, I/O, what each pass would touch")
    i.add_argument("model", type=Path)
    i.add_argument("--json", action="store_true")

    ps = sub.add_parser("passes", help="list the passes and their settings")
    ps.add_argument("--json", action="store_true", help="print the list as JSON instead of a table")

    u = sub.add_parser("unpack", help="turn a binary-packed model back into a plain float model")
    u.add_argument("model", type=Path)
    u.add_argument("-o", "--output", type=Path, required=True)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return _COMMANDS[args.command](args)
    except PostconditionError as exc:  # a pass broke its own promise: our bug, not the user's input
        if args.debug:
            raise
        print(f"onnxopt: internal error: {exc} (nothing was written; rerun with --debug and report it)",
              file=sys.stderr)
        return 1
    except OnnxoptError as exc:
        if args.debug:
            raise
        print(f"onnxopt: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `onnxopt compare ... --json | head`
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("onnxopt: interrupted; nothing was written", file=sys.stderr)
        return 130
    except Exception as exc:  # internal error: say so, keep the traceback for --debug
        if args.debug:
            raise
        print(f"onnxopt: internal error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)",
              file=sys.stderr)
        return 1


def _dims(values: list[str] | None) -> dict[str, int] | None:
    if not values:
        return None
    out = {}
    for item in values:
        name, sep, value = item.partition("=")
        if not sep or not value.isdigit():
            raise OnnxoptError(f"--dim {item}: expected NAME=N with N a positive integer")
        out[name] = int(value)
    return out


def _data_options(args: argparse.Namespace) -> dict[str, Any]:
    options: dict[str, Any] = {}
    dims = _dims(args.dim)
    if dims:
        options["dim_values"] = dims
    if args.preprocess:
        from onnxopt.images import ImagePreprocess

        options["preprocess"] = ImagePreprocess.parse(args.preprocess)
    return options


def _measure_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    if args.provider:
        kwargs["providers"] = tuple(args.provider)
    for name in ("threads", "batch_size", "latency_runs", "seed"):
        value = getattr(args, name)
        if value is not None:
            kwargs[name] = value
    return kwargs


def _check_report_path(args: argparse.Namespace, *models: Path) -> None:
    """Fail before any work when --report would replace a model or cannot be written."""
    if args.report is None:
        return
    report = args.report.resolve()
    if any(report == m.resolve() for m in models):
        raise OnnxoptError(f"--report {args.report}: that is a model path; choose another file for the report")
    if not report.parent.is_dir():
        raise OnnxoptError(f"--report {args.report}: folder {report.parent} does not exist")


def _emit(args: argparse.Namespace, payload: dict[str, Any], render: Any, *models: Path) -> None:
    from onnxopt.model_io import save_text

    text = json.dumps(payload, indent=2, default=_json_default)
    if args.report is not None:
        save_text(text + "\n", args.report, protected=models)
    if args.json:
        print(text)
    else:
        render()


def _json_default(value: Any) -> Any:
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def _cmd_optimize(args: argparse.Namespace) -> int:
    from onnxopt.api import optimize
    from onnxopt.registry import default_registry
    from onnxopt.render import print_optimize_report

    registry = default_registry()
    passes: list[Any] = []
    if args.recipe is not None:
        passes.extend(registry.from_recipe(args.recipe))
    passes.extend(args.passes or [])
    if not passes:
        raise OnnxoptError(f"give at least one --pass (or --recipe); passes: {', '.join(registry.names())}")
    if args.no_eval and args.evaluation is not None:
        raise OnnxoptError("--eval and --no-eval contradict each other: give one")
    output = args.output or args.model.with_name(args.model.stem + ".opt.onnx")
    _check_report_path(args, args.model, output)
    evaluation = None if args.no_eval else args.evaluation or "random"
    result = optimize(
        args.model, passes, calibration=args.calib, evaluation=evaluation, output=output,
        progress=not args.no_progress and not args.json, data_options=_data_options(args), **_measure_kwargs(args))
    _emit(args, result.report.to_dict(), lambda: print_optimize_report(result.report), args.model, output)
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from onnxopt.data import open_data
    from onnxopt.evaluate import compare
    from onnxopt.model_io import load_model
    from onnxopt.render import print_comparison

    _check_report_path(args, args.model_a, args.model_b)
    model_a = load_model(args.model_a, external_data=False)  # onnxruntime reads the weights from the paths
    load_model(args.model_b, external_data=False)  # a clear error for a bad second model before any measurement
    kwargs = _measure_kwargs(args)
    seed = kwargs.pop("seed", 0)
    data = open_data(args.data or "random", model_a, seed=seed, **_data_options(args))
    result = compare(args.model_a, args.model_b, data, progress=not args.no_progress and not args.json, **kwargs)
    _emit(args, result.to_dict(), lambda: print_comparison(result), args.model_a, args.model_b)
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    from onnxopt.inspect import inspect_model
    from onnxopt.model_io import load_model
    from onnxopt.render import print_inspection

    info = inspect_model(load_model(args.model))
    if args.json:
        print(json.dumps(info.to_dict(), indent=2, default=_json_default))
    else:
        print_inspection(info)
    return 0


def _cmd_passes(args: argparse.Namespace) -> int:
    from onnxopt.registry import default_registry
    from onnxopt.render import print_pass_list

    classes = default_registry().classes()
    if args.json:
        print(json.dumps([_pass_entry(cls) for cls in classes], indent=2, default=_json_default))
    else:
        print_pass_list(classes)
    return 0


def _pass_entry(cls: Any) -> dict[str, Any]:
    return {
        "name": cls.name, "summary": cls.summary, "lossy": cls.lossy,
        "calibration": "needed" if cls.needs_calibration else "optional" if cls.uses_calibration else "none",
        "settings": [dataclasses.asdict(s) for s in cls.settings()],
    }


def _cmd_unpack(args: argparse.Namespace) -> int:
    from onnxopt.api import optimize

    result = optimize(args.model, ["unpack"], output=args.output)
    for note in result.report.passes[0].notes:
        print(f"note: {note}", file=sys.stderr)
    print(f"wrote {result.report.output}")
    return 0


_COMMANDS = {
    "optimize": _cmd_optimize,
    "compare": _cmd_compare,
    "inspect": _cmd_inspect,
    "passes": _cmd_passes,
    "unpack": _cmd_unpack,
}

if __name__ == "__main__":
    sys.exit(main())
