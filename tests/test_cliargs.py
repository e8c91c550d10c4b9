"""The option builder (cgn.cliargs) on a small config, and the whole `cgn` parser built with it:
one flag per field across commands, help from the fields, old flag names still accepted."""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import dataclass, field
from typing import Literal

import pytest

from cgn import cliargs
from cgn.cli import build_parser, main
from cgn.cliargs import Flag
from cgn.config import to_dict
from cgn.errors import CGNError


@dataclass
class Inner:
    steps: int | None = field(default=None, metadata={"help": "stop after N steps"})
    rate: float = field(default=0.5, metadata={"help": "a rate"})
    fast: bool = field(default=False, metadata={"help": "go fast"})
    mode: Literal["a", "b"] = field(default="a", metadata={"help": "the mode"})
    name: str = field(default="x", metadata={"help": "100% a name"})


@dataclass
class Toy:
    inner: Inner = field(default_factory=Inner)
    sizes: list[int] = field(default_factory=list, metadata={"help": "sizes"})
    kinds: list[Literal["p", "q"]] = field(default_factory=lambda: ["p"], metadata={"help": "kinds"})
    keep: bool = field(default=True, metadata={"help": "keep it"})
    other: int = field(default=1, metadata={"help": "no flag of its own"})


TOY_FLAGS = {"inner.steps": Flag("--steps-x"), "inner.rate": Flag("--rate-x"),
             "inner.fast": Flag("--fast-x", aliases=("--quick-x",)), "inner.mode": Flag("--mode-x"),
             "inner.name": Flag("--name-x"), "sizes": Flag("--sizes-x", "N,N"),
             "kinds": Flag("--kind-x", repeat=True),
             "keep": Flag("--keep-x", negations=("--drop-x",))}


@pytest.fixture
def toy(monkeypatch):
    for path, f in TOY_FLAGS.items():
        monkeypatch.setitem(cliargs.FLAGS, path, f)
    p = argparse.ArgumentParser(prog="toy")
    presets = {"one": Toy(), "two": Toy(inner=Inner(rate=2.0))}
    cliargs.add_fields(p, Toy, TOY_FLAGS, defaults=presets)
    cliargs.add_config_options(p, "other=2", print_config=True)
    return p


def _action(parser, flag):
    return next(a for a in parser._actions if flag in a.option_strings)


def test_types_choices_booleans_and_optional(toy):
    args = toy.parse_args(["--steps-x", "1e3", "--rate-x", "0.25", "--fast-x", "--mode-x", "b",
                           "--sizes-x", "1e4,20", "--kind-x", "q", "--kind-x", "p", "--no-keep-x"])
    assert cliargs.given(args) == {"inner.steps": 1000, "inner.rate": 0.25, "inner.fast": True,
                                   "inner.mode": "b", "sizes": [10000, 20], "kinds": ["q", "p"],
                                   "keep": False}
    cfg = cliargs.resolve(args, Toy)
    assert (cfg.inner.steps, cfg.inner.rate, cfg.inner.fast, cfg.sizes, cfg.keep) == \
        (1000, 0.25, True, [10000, 20], False)
    assert cliargs.given(toy.parse_args([])) == {}  # nothing given: the base config stays
    assert cliargs.resolve(toy.parse_args([]), Toy) == Toy()
    assert _action(toy, "--mode-x").choices == ["a", "b"]
    assert _action(toy, "--kind-x").choices == ["p", "q"]
    assert _action(toy, "--fast-x").option_strings == ["--fast-x", "--no-fast-x"]
    for bad in (["--steps-x", "1.5"], ["--rate-x", "fast"], ["--mode-x", "c"], ["--kind-x", "r"]):
        with pytest.raises(SystemExit):
            toy.parse_args(bad)
    # hidden old spellings: an alias and a negation
    assert cliargs.given(toy.parse_args(["--quick-x", "--drop-x"])) == {"inner.fast": True, "keep": False}
    help_text = toy.format_help()
    assert "--quick-x" not in help_text and "--drop-x" not in help_text


def test_help_is_the_field_help_with_the_default(toy):
    helps = {a.option_strings[0]: a.help for a in toy._actions if hasattr(a, "cgn_field")}
    assert helps["--steps-x"] == "stop after N steps (default: none)"
    assert helps["--rate-x"] == "a rate (default: 0.5; with --preset two: 2.0)"
    assert helps["--fast-x"] == "go fast (default: off)"
    assert helps["--keep-x"] == "keep it (default: on)"
    assert helps["--kind-x"] == "kinds (repeatable; default: p)"
    assert helps["--name-x"] == "100%% a name (default: x)"   # argparse's % escaping
    assert "100% a name (default: x)" in toy.format_help()


def test_set_is_applied_last_and_checked(toy):
    args = toy.parse_args(["--rate-x", "0.25", "--set", "inner.rate=3", "--set", "other=7"])
    cfg = cliargs.resolve(args, Toy)
    assert (cfg.inner.rate, cfg.other) == (3.0, 7)
    with pytest.raises(CGNError, match="write it as SECTION.FIELD=VALUE"):
        cliargs.resolve(toy.parse_args(["--set", "other"]), Toy)
    with pytest.raises(CGNError, match="unknown field"):
        cliargs.resolve(toy.parse_args(["--set", "inner.nope=1"]), Toy)
    with pytest.raises(CGNError, match="--steps-x is required"):
        cliargs.resolve(toy.parse_args([]), Toy, required=["inner.steps"])
    assert cliargs.resolve(toy.parse_args(["--set", "inner.steps=4"]), Toy,
                           required=["inner.steps"]).inner.steps == 4


def test_config_file_round_trip(toy, tmp_path):
    saved = Toy(inner=Inner(steps=9, mode="b"), sizes=[3], other=5)
    run_record, plain = tmp_path / "config.json", tmp_path / "plain.json"
    run_record.write_text(json.dumps({"config": to_dict(saved), "environment": {}}))
    plain.write_text(json.dumps(to_dict(saved)))
    for f in (run_record, plain):
        assert cliargs.resolve(toy.parse_args(["--config", str(f)]), Toy) == saved
    # options and --set apply on top of the file; the base is not consulted
    cfg = cliargs.resolve(toy.parse_args(["--config", str(plain), "--steps-x", "2"]), Toy,
                          base=lambda: pytest.fail("base used despite --config"))
    assert (cfg.inner.steps, cfg.other) == (2, 5)
    bad = tmp_path / "bad.json"
    bad.write_text('{"inner": {"nope": 1}}')
    with pytest.raises(CGNError, match=r"--config .*bad.json: .*unknown field"):
        cliargs.resolve(toy.parse_args(["--config", str(bad)]), Toy)
    bad.write_text("not json")
    with pytest.raises(CGNError, match="not JSON"):
        cliargs.resolve(toy.parse_args(["--config", str(bad)]), Toy)


def test_train_cgn_config_file_round_trip(tmp_path, capsys):
    assert main(["train-cgn", "--preset", "wildlife-mnist", "--recipe", "--steps", "7",
                 "--set", "train.sample_every=9", "--print-config"]) == 0
    printed = capsys.readouterr().out
    saved = tmp_path / "cfg.json"
    saved.write_text(printed)
    assert main(["train-cgn", "--config", str(saved), "--print-config"]) == 0
    assert capsys.readouterr().out == printed
    # a run's config.json (with the record of what "auto" resolved to) works too
    record = {"config": {**json.loads(printed), "resolved": {"device": "cpu"}}}
    saved.write_text(json.dumps(record))
    assert main(["train-cgn", "--config", str(saved), "--seed", "3", "--print-config"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["train"]["seed"] == 3 and again["train"]["max_steps"] == 7
    assert main(["train-cgn", "--print-config"]) == 2
    assert "--preset NAME or --config FILE" in capsys.readouterr().err


def _walk(parser, name="cgn"):
    yield name, parser
    for a in parser._actions:
        if isinstance(a, argparse._SubParsersAction):
            for sub, p in a.choices.items():
                yield from _walk(p, f"{name} {sub}")


def test_one_flag_per_field_and_help_from_the_field():
    flags: dict[str, set[str]] = {}
    n = 0
    for name, parser in _walk(build_parser()):
        assert parser.description, f"{name} has no description"
        for a in parser._actions:
            if not hasattr(a, "cgn_field"):
                continue
            n += 1
            cls, path = a.cgn_field
            flags.setdefault(path, set()).add(a.option_strings[0])
            assert a.option_strings[0] == cliargs.FLAGS[path].name
            text = cliargs.field_help(cls, path).replace("%", "%%")
            assert a.help.startswith(text + " ("), (name, path)
            assert re.fullmatch(r" \(((repeatable; )?default: .+|required unless --config FILE)\)",
                                a.help[len(text):]), (name, path, a.help)
    assert n > 60
    assert {p: f for p, f in flags.items() if len(f) > 1} == {}


def test_help_texts_hold_no_internal_references():
    for name, parser in _walk(build_parser()):
        texts = [parser.description or ""] + [a.help or "" for a in parser._actions]
        texts += [c.help or "" for a in parser._actions
                  if isinstance(a, argparse._SubParsersAction) for c in a._choices_actions]
        for t in texts:
            assert "SPEC" not in t and "§" not in t and "`" not in t, (name, t)


def test_old_flag_names_keep_working():
    p = build_parser()
    given = lambda argv: cliargs.given(p.parse_args(argv))  # noqa: E731
    assert given(["imagenet", "train", "--out", "x", "--download"]) == {"loss.allow_download": True}
    assert given(["imagenet", "train", "--out", "x", "--allow-download"]) == {"loss.allow_download": True}
    assert given(["imagenet", "evaluate-classifier", "--plain", "resnet18",
                  "--include-same-category"]) == {"eval.exclude_same_category": False}
    assert given(["imagenet", "train-classifier", "--out", "x", "--no-pretrained",
                  "--no-tensorboard"]) == {"model.pretrained": False, "tensorboard": False}
    assert given(["generate", "--checkpoint", "c", "--out", "o", "--no-counterfactual",
                  "--n", "1e5"]) == {"counterfactual": False, "n": 100000}
    assert given(["train-classifier", "--out", "o", "--official-test", "--dataset",
                  "wildlife-mnist"]) == {"official_test": True, "dataset": "wildlife-mnist"}
    assert given(["reproduce", "mnist", "--out", "o", "--dataset", "colored-mnist", "--dataset",
                  "wildlife-mnist", "--ablation-sizes", "1e4,1e5", "--size", "60"]) == {
        "datasets": ["colored-mnist", "wildlife-mnist"], "ablation_sizes": [10000, 100000],
        "n_counterfactuals": 60}


def test_train_classifier_needs_a_dataset(capsys, tmp_path):
    assert main(["train-classifier", "--out", str(tmp_path / "r")]) == 2
    assert "--dataset is required" in capsys.readouterr().err


def test_resolve_or_resume_continues_the_stored_config(toy, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    stored = Toy(inner=Inner(steps=9), other=5)
    (out / "config.json").write_text(json.dumps({"config": to_dict(stored)}))

    def run(argv, resume=True, **kw):
        args = toy.parse_args(argv)
        args.resume, args.preset = resume, None
        return cliargs.resolve_or_resume(args, Toy, out, base=lambda: Toy(other=2), **kw)

    assert run([]) == stored                                   # the run's config, not the base
    assert run([], resume=False) == Toy(other=2)               # a new run: resolve()
    # Toy has no resume rules: every change is refused, in one line
    with pytest.raises(CGNError, match=r"^--resume continues the stored config of .*run: a resume "
                                       r"may not change inner\.rate \(0\.5 -> 0\.25\); drop those"):
        run(["--rate-x", "0.25"])
    with pytest.raises(CGNError, match="other"):
        run(["--set", "other=6"])
    with pytest.raises(CGNError, match="drop --config"):
        run(["--config", str(out / "config.json")])
    assert run(["--config", str(out / "config.json")], refuse_base=False) == stored
    (out / "config.json").write_text(json.dumps({"environment": {}}))
    with pytest.raises(CGNError, match="config.json is damaged"):
        run([])


def test_options_and_set_are_validated_together():
    """--image-size 300 alone would break resize >= crop; with the --set beside it, it does not."""
    from cgn.imagenet.classifier_config import ClassifierTrainConfig
    args = build_parser().parse_args(["imagenet", "train-classifier", "--out", "x", "--image-size",
                                      "300", "--set", "data.resize_size=320"])
    cfg = cliargs.resolve(args, ClassifierTrainConfig)
    assert (cfg.data.image_size, cfg.data.resize_size) == (300, 320)


def test_one_name_for_one_meaning_across_commands():
    p = build_parser()
    given = lambda argv: cliargs.given(p.parse_args(argv))  # noqa: E731
    # "stop after N steps": --max-steps (train-classifier) is accepted where the flag is --steps
    for cmd in (["train-cgn"], ["imagenet", "pretrain", "u2net", "--out", "x"]):
        assert given([*cmd, "--max-steps", "7"]) == given([*cmd, "--steps", "7"]) == {"train.max_steps": 7}
    metrics = ["imagenet", "metrics", "--folder", "f"]
    assert p.parse_args([*metrics, "--allow-download"]).download is True
    assert p.parse_args([*metrics, "--download"]).download is True
    # --threads: the same help wherever it is
    helps = {name: _action(parser, "--threads").help for name, parser in _walk(p)
             if any("--threads" in a.option_strings for a in parser._actions)}
    assert {"cgn generate", "cgn train-cgn", "cgn imagenet pretrain judges"} <= set(helps)
    # a pipeline's threads are per worker process (--jobs): one help for both reproduce targets
    per_worker = {n for n in helps if n.startswith("cgn reproduce ")}
    assert per_worker == {"cgn reproduce mnist", "cgn reproduce imagenet"}
    assert len({helps[n] for n in per_worker}) == 1
    assert {h for n, h in helps.items() if n not in per_worker} == {
        "torch CPU threads (0: torch's default) (default: 0)"}


def test_every_command_that_computes_has_the_run_control_flags():
    """--device and --threads wherever a command runs a model: one help text each, defaults shown."""
    from cgn.core import runcontrol
    threads = f"{runcontrol.THREADS_HELP} (default: 0)"
    leaves = {name: {o: a for a in parser._actions for o in a.option_strings}
              for name, parser in _walk(build_parser())
              if not any(isinstance(a, argparse._SubParsersAction) for a in parser._actions)}
    computing = {name for name, opts in leaves.items() if "--device" in opts}
    assert {"cgn sample", "cgn classify", "cgn explain", "cgn generate", "cgn train-cgn",
            "cgn train-classifier", "cgn imagenet train", "cgn imagenet train-classifier",
            "cgn imagenet generate", "cgn imagenet metrics", "cgn imagenet evaluate-classifier",
            "cgn imagenet pretrain u2net", "cgn imagenet pretrain biggan",
            "cgn imagenet pretrain judges"} <= computing
    for name in sorted(computing):
        opts = leaves[name]
        assert "--threads" in opts, f"{name} has --device but no --threads"
        if not name.startswith("cgn reproduce"):  # there: threads per worker process
            assert opts["--threads"].help == threads, name
        assert opts["--device"].help.startswith(runcontrol.DEVICE_HELP + " (default: "), name
    assert cliargs.DEVICE_HELP == runcontrol.DEVICE_HELP


def test_help_shows_defaults_in_one_form():
    """An option with a default says it as '(default: X)' (or '; default: X' in a list of
    presets); no other spelling, no internal references."""
    for name, parser in _walk(build_parser()):
        for a in parser._actions:
            if not a.option_strings or a.help == argparse.SUPPRESS or isinstance(
                    a, (argparse._HelpAction, argparse._VersionAction)):
                continue
            text = a.help or ""
            assert text, (name, a.option_strings)
            assert not re.search(r"\(default [^:]|[,;] default\)|\bdefault \d", text), (name, text)
            assert not re.search(r"\bissue\b|\bsession\b|#\d|\bhelper\b|\bTODO\b", text), (name, text)
            shown = a.default if a.default is not argparse.SUPPRESS else None
            if shown not in (None, False, [], ()):  # config options: SUPPRESS, shown by add_fields
                assert "default: " in text, (name, a.option_strings[0], text)
