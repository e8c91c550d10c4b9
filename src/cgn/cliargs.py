"""Command-line options built from the config dataclasses.

:func:`add_fields` turns chosen config fields into options: the help is the field's
``metadata["help"]``, the type, choices (``Literal``) and on/off form (``bool``) come from its
annotation, and ``--help`` shows its default (the dataclass's, or each preset's). The flag of a
field is declared once, in :data:`FLAGS`, so a field has the same flag in every command.
:func:`resolve` puts the parsed values back onto a config: first the base (``--config FILE`` or
a preset), then the options given, then ``--set SECTION.FIELD=VALUE`` (parsed only here);
:func:`resolve_or_resume` does the same for commands whose ``--resume`` continues a stored run.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import shlex
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from cgn.config import check_resume, coerce, from_dict, override, to_dict
from cgn.core import runcontrol
from cgn.errors import CGNError


@dataclass(frozen=True)
class Flag:
    name: str
    metavar: str | None = None
    aliases: tuple[str, ...] = ()    # older spellings: accepted, hidden from --help
    negations: tuple[str, ...] = ()  # bool fields: older spellings that switch the field off
    repeat: bool = False             # list fields: one item per flag, repeatable


# Field path -> flag, for every command (paths are relative to the command's config).
FLAGS: dict[str, Flag] = {path: flag if isinstance(flag, Flag) else Flag(flag) for path, flag in {
    # shared by several configs
    "seed": "--seed", "data_seed": "--data-seed", "device": "--device", "threads": "--threads",
    "epochs": "--epochs", "batch_size": "--batch-size", "lr": "--lr", "precision": "--precision",
    "cf_ratio": "--cf-ratio", "textures": Flag("--textures", "DIR"),
    "limit_real": Flag("--limit-real", "N"),
    # the MNIST CGN (train-cgn) and the ImageNet CGN (imagenet train)
    "train.epochs": "--epochs", "train.max_steps": Flag("--steps", aliases=("--max-steps",)),
    "train.batch_size": "--batch-size",
    "train.seed": "--seed", "train.data_seed": "--data-seed",
    "train.textures": Flag("--textures", "DIR"), "train.limit_train": Flag("--limit-train", "N"),
    "train.device": "--device", "train.threads": "--threads",
    "train.episodes": "--episodes", "train.batch_acc": "--batch-acc",
    "loss.ssim_weight": "--ssim-weight", "loss.border_weight": "--border-weight",
    "loss.feature_extractor": "--feature-extractor", "loss.feature_scale": "--feature-scale",
    "loss.allow_download": Flag("--allow-download", aliases=("--download",)),
    "loss.precision": "--precision", "loss.vgg16": Flag("--vgg16", "FILE"),
    "model.biggan": Flag("--biggan", "PATH"), "model.u2net": Flag("--u2net", "FILE"),
    "model.cgn": Flag("--cgn", "FILE"),
    # the BigGAN-deep stand-in (imagenet pretrain biggan)
    "train.data": Flag("--data", "FILE.npz"), "train.steps": "--steps", "train.precision": "--precision",
    "train.ema_decay": "--ema-decay", "train.ema_start": "--ema-start",
    "model.resolution": "--resolution", "model.g_width": "--g-width", "model.d_width": "--d-width",
    "model.num_classes": "--num-classes", "optim.lr_g": "--lr-g", "optim.lr_d": "--lr-d",
    "optim.d_steps": "--d-steps",
    # the MNIST classifier (train-classifier) and counterfactual sets (generate)
    "dataset": "--dataset", "train_set": "--train-set", "generated": Flag("--generated", "DIR"),
    "official_test": "--official-test", "n": "--n", "counterfactual": "--counterfactual",
    "shard_size": "--shard-size",
    # the MNIST reproduction (reproduce mnist)
    "datasets": Flag("--dataset", repeat=True), "train_sets": Flag("--train-set", repeat=True),
    "n_counterfactuals": "--size", "cgn_steps": "--cgn-steps",
    "ablation_sizes": Flag("--ablation-sizes", "N,N,..."), "ssim_weight": "--ssim-weight",
    "jobs": Flag("--jobs", "N"),
    # the ImageNet classifier ensemble (imagenet train-classifier / evaluate-classifier)
    "data.train_dir": Flag("--train-dir", "DIR"), "data.val_dir": Flag("--val-dir", "DIR"),
    "data.cf_dir": Flag("--cf-dir", "DIR"), "data.cf_ratio": "--cf-ratio",
    "data.class_index": Flag("--class-index", "FILE"), "data.image_size": "--image-size",
    "data.resize_size": "--resize-size", "data.workers": "--workers",
    "eval.cue_conflict_dir": Flag("--cue-conflict", "DIR"), "eval.in9_dir": Flag("--in9", "DIR"),
    "eval.batch_size": "--eval-batch-size", "eval.in9_normalization": "--in9-normalization",
    "eval.exclude_same_category": Flag("--exclude-same-category",
                                       negations=("--include-same-category",)),
    "model.arch": "--arch", "model.pretrained": "--pretrained",
    "model.weights_file": Flag("--weights", "FILE"), "optim.epochs": "--epochs",
    "optim.batch_size": "--batch-size", "optim.lr": "--lr", "max_steps": "--max-steps",
    "checkpoint_every": "--checkpoint-every", "log_every": "--log-every",
    "tensorboard": "--tensorboard",
    # the U2-Net stand-in (imagenet pretrain u2net)
    "data.train": Flag("--data", "FILE"), "data.test": Flag("--test", "FILE"),
    "train.limit_test": Flag("--limit-test", "N"),
    # the world's judges (imagenet pretrain judges)
    "world": Flag("--world", "DIR"), "width": "--width", "epoch_images": Flag("--epoch-images", "N"),
    "limit_train": Flag("--limit-train", "N"), "limit_test": Flag("--limit-test", "N"),
    # the ImageNet reproduction on a world (reproduce imagenet)
    "resolution": "--resolution", "n_train": Flag("--n-train", "N"), "n_test": Flag("--n-test", "N"),
    "biggan": Flag("--biggan", "DIR"), "u2net": Flag("--u2net", "FILE"), "judges": Flag("--judges", "DIR"),
    "biggan_preset": "--biggan-preset", "u2net_preset": "--u2net-preset",
    "judges_preset": "--judges-preset", "cgn_preset": "--cgn-preset",
    "classifier_preset": "--classifier-preset", "classifier_arch": "--classifier-arch", "cgn_episodes": "--cgn-episodes",
    "cgn_batch_size": "--cgn-batch-size", "cgn_batch_acc": "--cgn-batch-acc",
    "ablations": Flag("--ablations", "NAME,..."), "ablation_episodes": "--ablation-episodes",
    "eval_samples": Flag("--eval-samples", "N"), "gan_truncation": "--gan-truncation",
    "lime_images": Flag("--lime-images", "N"), "lime_samples": Flag("--lime-samples", "N"),
    "results": Flag("--results", "DIR"),
}.items()}

DEST = "config:"  # namespace attribute of a config option: DEST + field path
METAVARS = {int: "N", float: "X"}

# Help of options that are not config fields but recur in several commands.
DEVICE_HELP = runcontrol.DEVICE_HELP
RESUME_HELP = "continue the run in --out from its last checkpoint"
RESUME_HELP_STORED = (RESUME_HELP + " (with the run's stored settings; options given may change "
                      "only the length and how it runs)")


def add_cgn_option(parser) -> None:
    """``--cgn`` (alias ``--checkpoint``) and ``--reference-format``: the MNIST CGN a command reads."""
    parser.add_argument("--cgn", "--checkpoint", dest="cgn", required=True, metavar="CGN",
                        help="a shipped pretrained CGN by name (colored-mnist, double-colored-mnist, "
                             "wildlife-mnist), a cgn train-cgn checkpoint, or the authors' .pth "
                             "with --reference-format")
    parser.add_argument("--reference-format", action="store_true",
                        help="the file is one of the authors' plain state dicts")


def add_device_option(parser) -> None:
    """``--device`` of a command without a config field for it, as a config's reads."""
    parser.add_argument("--device", default="auto", help=f"{runcontrol.DEVICE_HELP} (default: auto)")


def add_threads_option(parser) -> None:
    """``--threads`` of a command without a config field for it, as a config's reads; the
    command applies it with :func:`cgn.core.runcontrol.set_threads` before it builds a model."""
    parser.add_argument("--threads", type=int, default=0, metavar="N",
                        help=f"{runcontrol.THREADS_HELP} (default: 0)")


def flag(path: str) -> Flag:
    if path not in FLAGS:
        raise KeyError(f"config field {path!r} has no flag: add it to cgn.cliargs.FLAGS")
    return FLAGS[path]


def field_of(cls: type, path: str) -> tuple[dataclasses.Field, Any]:
    """The dataclass field at ``path`` (``section.field``) of ``cls`` and its type."""
    *sections, name = path.split(".")
    for section in sections:
        cls = typing.get_type_hints(cls)[section]
    fields = {f.name: f for f in dataclasses.fields(cls)}
    if name not in fields:
        raise KeyError(f"{cls.__name__} has no field {name!r}")
    return fields[name], typing.get_type_hints(cls)[name]


def field_help(cls: type, path: str) -> str:
    help_text = field_of(cls, path)[0].metadata.get("help")
    if not help_text:
        raise KeyError(f"config field {path!r} of {cls.__name__} has no help text")
    return help_text


def plain(text: str) -> str:
    """Help text without the reST/Markdown quoting of docstrings."""
    return text.replace("``", "").replace("`", "")


def show(value: Any) -> str:
    """A config value as ``--help`` writes it."""
    if value is None or value == "":
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (list, tuple)):
        return ",".join(show(v) for v in value) or "none"
    return str(value)


def _get(cfg: Any, path: str) -> Any:
    for part in path.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _default_text(path: str, defaults: Mapping[str, Any]) -> str:
    """The default of every preset: the most common value, then the presets that differ."""
    values = {name: show(_get(cfg, path)) for name, cfg in defaults.items()}
    main = collections.Counter(values.values()).most_common(1)[0][0]
    rest = [f"{name}: {v}" for name, v in values.items() if v != main]
    return main + (f"; with --preset {', '.join(rest)}" if rest else "")


def _optional(tp: Any) -> Any:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(inner) == 1:
            return inner[0]
    return tp


def _value_parser(tp: Any) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            return coerce(text, tp, "")
        except CGNError as e:
            raise argparse.ArgumentTypeError(str(e).split(": ", 1)[-1]) from None
    return parse


def add_fields(parser, cls: type, paths: Iterable[str], *,
               defaults: Mapping[str, Any] | Any | None = None,
               notes: Mapping[str, str] | None = None, template: str = "{}",
               required: Iterable[str] = ()) -> None:
    """Add an option per config field of ``cls`` in ``paths`` to ``parser`` (or an argument
    group). ``defaults``: the config (or ``{preset name: config}``) whose values ``--help``
    shows; ``notes``: a default text per path instead; ``template`` wraps the shown default;
    ``required``: paths that :func:`resolve` requires (unless ``--config FILE`` gives them)."""
    required = set(required)
    if defaults is None:
        defaults = cls()
    if not isinstance(defaults, Mapping):
        defaults = {"": defaults}
    for path in paths:
        f, help_text = flag(path), field_help(cls, path)
        tp = _optional(field_of(cls, path)[1])
        shown = (notes or {}).get(path) or template.format(_default_text(path, defaults))
        shown = ("required unless --config FILE" if path in required else
                 f"repeatable; default: {shown}" if f.repeat else f"default: {shown}")
        kw: dict[str, Any] = {"dest": DEST + path, "default": argparse.SUPPRESS,
                              "help": f"{help_text} ({shown})".replace("%", "%%")}
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        if tp is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif origin is typing.Literal:
            kw.update(choices=list(args), metavar=f.metavar)
        elif f.repeat:
            item = args[0] if args else str
            kw["action"] = "append"
            if typing.get_origin(item) is typing.Literal:
                kw["choices"] = list(typing.get_args(item))
            else:
                kw["type"] = _value_parser(item)
            kw["metavar"] = f.metavar
        else:
            kw.update(type=_value_parser(tp), metavar=f.metavar or METAVARS.get(
                tp, f.name.lstrip("-").upper().replace("-", "_")))
        action = parser.add_argument(f.name, **kw)
        action.cgn_field = (cls, path)
        hidden = {"dest": DEST + path, "default": argparse.SUPPRESS, "help": argparse.SUPPRESS}
        for alias in f.aliases:
            same = ({"action": "store_const", "const": True} if tp is bool else
                    {k: v for k, v in kw.items() if k not in hidden})
            parser.add_argument(alias, **hidden, **same).cgn_alias = (cls, path)
        for negation in f.negations:
            parser.add_argument(negation, action="store_const", const=False,
                                **hidden).cgn_alias = (cls, path)


def add_config_options(parser, example: str, *, config_file: bool = True,
                       print_config: bool = False) -> None:
    """``--config FILE``, ``--set SECTION.FIELD=VALUE`` and ``--print-config``."""
    if config_file:
        parser.add_argument("--config", metavar="FILE",
                            help="start from a saved config instead of the preset or the "
                                 "defaults: a run's config.json or a JSON file of the config")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                        help=f"set any config field, e.g. --set {example} (repeatable; applied "
                             "after the options above)")
    if print_config:
        parser.add_argument("--print-config", action="store_true",
                            help="print the resolved config as JSON and exit")


def given(args: argparse.Namespace) -> dict[str, Any]:
    """``{field path: value}`` of the config options on the command line."""
    return {k[len(DEST):]: v for k, v in vars(args).items() if k.startswith(DEST)}


def absolute(values: Mapping[str, Any], paths: Iterable[str]) -> dict[str, Any]:
    """``values`` with the non-empty ones at ``paths`` made absolute (a run directory records
    where its data lives, whatever the directory a rerun starts from)."""
    paths = set(paths)
    return {k: str(Path(v).expanduser().resolve()) if k in paths and v else v
            for k, v in values.items()}


def set_values(args: argparse.Namespace) -> dict[str, str]:
    """``{field path: text}`` of the ``--set`` assignments (a later one wins)."""
    out = {}
    for item in getattr(args, "set", None) or []:
        if "=" not in item:
            raise CGNError(f"--set {item!r}: write it as SECTION.FIELD=VALUE")
        key, value = item.split("=", 1)
        out[key.strip()] = value.strip()
    return out


def load_config(path: str, cls: type) -> Any:
    """A config saved as a run's ``config.json`` (``{"config": ...}``) or as a plain dict."""
    p = Path(path).expanduser()
    try:
        data = json.loads(p.read_text())
    except OSError as e:
        raise CGNError(f"--config {p}: cannot read it ({e.strerror or type(e).__name__})") from None
    except json.JSONDecodeError as e:
        raise CGNError(f"--config {p}: not JSON ({e.msg}, line {e.lineno}); give a run's "
                       "config.json or the output of --print-config") from None
    names = {f.name for f in dataclasses.fields(cls)}
    if isinstance(data, dict) and "config" not in names and isinstance(data.get("config"), dict):
        data = data["config"]
    if not isinstance(data, dict):
        raise CGNError(f"--config {p}: expected a JSON object holding a {cls.__name__}")
    if "resolved" not in names:  # train-cgn records what "auto" settings resolved to beside them
        data = {k: v for k, v in data.items() if k != "resolved"}
    try:
        return from_dict(cls, data)
    except CGNError as e:
        raise CGNError(f"--config {p}: {e}") from None


def start(args: argparse.Namespace, cls: type, base: Callable[[], Any] | None = None) -> Any:
    """The config a command starts from: ``--config FILE``, else ``base()``, else the defaults."""
    if getattr(args, "config", None):
        return load_config(args.config, cls)
    return base() if base else cls()


def apply(cfg: Any, args: argparse.Namespace, values: Mapping[str, Any] | None = None) -> Any:
    """``cfg`` with the config options given (or ``values``) and ``--set`` applied together (a
    ``--set`` wins over an option for the same field); only the result is validated."""
    return override(cfg, {**(given(args) if values is None else values), **set_values(args)})


def resolve(args: argparse.Namespace, cls: type, base: Callable[[], Any] | None = None, *,
            values: Mapping[str, Any] | None = None, required: Iterable[str] = ()) -> Any:
    """The config of a command: :func:`start`, then :func:`apply`; ``required`` paths must be
    given by an option, ``--set`` or ``--config FILE``."""
    named = {**(given(args) if values is None else values), **set_values(args)}
    for path in required:
        if not getattr(args, "config", None) and path not in named:
            raise CGNError(f"{flag(path).name} is required (or start from a saved config with "
                           "--config FILE)")
    return apply(start(args, cls, base), args, values)


def resolve_or_resume(args: argparse.Namespace, cls: type, out: str | Path,
                      base: Callable[[], Any] | None = None, *,
                      values: Mapping[str, Any] | None = None, required: Iterable[str] = (),
                      stored: Callable[[dict], Any] | None = None,
                      refuse_base: bool = True) -> Any:
    """The config of a command that continues runs in ``out``.

    With ``--resume`` and a stored ``OUT/config.json``: the stored config (``stored(record)``,
    by default ``from_dict(cls, record)``) with the options given (or ``values``) and ``--set``
    applied; a change that the resume rule of ``cls`` keeps (:func:`cgn.config.check_resume`)
    is refused with one line, and so are (``refuse_base``) ``--config`` and a ``--preset``
    other than the run's. Otherwise the config of a new run: :func:`resolve` (``base``,
    ``values``, ``required``)."""
    path = Path(out) / "config.json"
    if not (getattr(args, "resume", False) and path.is_file()):
        return resolve(args, cls, base, values=values, required=required)
    from cgn.io import read_json
    record = read_json(path, "run config")
    if not isinstance(record, dict) or not isinstance(record.get("config"), dict):
        raise CGNError(f"{path} is damaged (not the JSON record cgn writes); restore it, or start "
                       "the run again in another --out")
    try:
        old = (stored or (lambda d: from_dict(cls, d)))(record["config"])
    except CGNError as e:
        raise CGNError(f"{path}: {e}") from None
    if refuse_base:
        if getattr(args, "config", None):
            raise CGNError("--resume continues with the run's stored config; drop --config")
        name, was = getattr(args, "preset", None), getattr(old, "preset", None)
        if name and was is not None and name != was:
            raise CGNError(f"--resume: the run in {out} uses preset {was or '(none)'}, not {name}; "
                           "drop --preset or choose another --out")
    cfg = apply(old, args, values)
    check_resume(cls, to_dict(old), to_dict(cfg), f"--resume continues the stored config of {out}",
                 "drop those options or start a new run with another --out")
    return cfg


def print_config(cfg: Any) -> None:
    print(json.dumps(to_dict(cfg), indent=2))


def command_line(argv: list[str]) -> str:
    """The command a run records (tables, summaries): ``cgn`` and the arguments, shell-quoted,
    with the run's own folder (``--out``'s value) written as ``RUN``: the records live in that
    folder and are copied into results/, where this machine's path means nothing."""
    args, i = [], 0
    while i < len(argv):
        a = argv[i]
        if a == "--out" and i + 1 < len(argv):
            args += [a, "RUN"]
            i += 2
            continue
        args.append("--out=RUN" if a.startswith("--out=") else a)
        i += 1
    return "cgn " + shlex.join(args)
