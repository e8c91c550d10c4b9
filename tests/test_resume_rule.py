"""The one resume rule (cgn.config.resume_diff / check_resume): field metadata says what a rerun
may change; everything else, known or not, must keep its stored value."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import pytest

from cgn.config import ResumeDiff, _dataclass_in, _field_types, check_resume, resume_diff, to_dict
from cgn.core.rundir import RunDir
from cgn.errors import CGNError


@dataclass
class Paths:
    train: str = ""
    val: str = ""


@dataclass
class Train:
    seed: int = 0
    epochs: int = field(default=10, metadata={"help": "passes", "resume": "extend"})
    device: str = field(default="auto", metadata={"help": "where", "resume": "free"})


@dataclass
class Run:
    train: Train = field(default_factory=Train)
    data: Paths = field(default_factory=Paths, metadata={"resume": "free"})  # a whole section
    extra: Train | None = None
    sizes: list[int] = field(default_factory=list, metadata={"resume": "extend"})
    runs: dict[str, str] = field(default_factory=dict)
    jobs: int = field(default=1, metadata={"resume": "free"})


def _cfg(**changes) -> dict:
    d = to_dict(Run())
    for path, value in changes.items():
        *parents, leaf = path.split("__")
        node = d
        for p in parents:
            node = node[p]
        node[leaf] = value
    return d


def test_allowed_changes_are_sorted_by_rule_and_applied():
    stored = _cfg()
    new = _cfg(train__epochs=20, train__device="cuda", data__train="/a", jobs=4, sizes=[100])
    diff = check_resume(Run, stored, new, "run r")
    assert diff.conflicts == {}
    assert diff.free == {"data.train": ("", "/a"), "jobs": (1, 4), "train.device": ("auto", "cuda")}
    assert diff.extended == {"sizes": ([], [100]), "train.epochs": (10, 20)}
    assert list(diff.allowed) == ["data.train", "jobs", "sizes", "train.device", "train.epochs"]
    merged = diff.apply(stored)
    assert merged == new and stored == _cfg()  # apply copies
    assert resume_diff(Run, stored, stored) == ResumeDiff({}, {}, {})


def test_a_forbidden_change_is_one_line_naming_field_values_and_fix():
    stored, new = _cfg(), _cfg(train__seed=3, train__epochs=20)
    diff = resume_diff(Run, stored, new)
    assert diff.conflicts == {"train.seed": (0, 3)} and diff.extended == {"train.epochs": (10, 20)}
    with pytest.raises(CGNError) as e:
        check_resume(Run, stored, new, "the run in r was started with other settings")
    msg = str(e.value)
    assert msg == ("the run in r was started with other settings: a resume may not change "
                   "train.seed (0 -> 3); pass the same values or choose another --out")
    with pytest.raises(CGNError, match=r"runs\.colored \(absent -> 'x'\); drop it"):
        check_resume(Run, stored, _cfg(runs={"colored": "x"}), "r", "drop it")
    # the allowed changes are not applied by a refused resume, and apply keeps the conflicts' stored values
    assert diff.apply(stored)["train"] == {"seed": 0, "epochs": 20, "device": "auto"}


def test_extend_fields_may_shrink_as_todays_checks_allowed():
    # None of the checks this rule replaced refused a shorter run (fewer epochs, steps, episodes
    # or ablation sizes), so "extend" reports the change and allows it.
    diff = check_resume(Run, _cfg(train__epochs=20, sizes=[1, 2]), _cfg(train__epochs=5, sizes=[1]), "r")
    assert diff.extended == {"sizes": ([1, 2], [1]), "train.epochs": (20, 5)} and not diff.conflicts


def test_nested_optional_sections_and_dict_fields():
    stored = _cfg(extra=to_dict(Train()))
    diff = resume_diff(Run, stored, _cfg(extra={**to_dict(Train()), "device": "cpu", "seed": 1}))
    assert diff.free == {"extra.device": ("auto", "cpu")} and diff.conflicts == {"extra.seed": (0, 1)}
    # a section that appears (None -> fields): its rules hold for its fields, the section itself must stay
    diff = resume_diff(Run, _cfg(), stored)
    assert set(diff.conflicts) == {"extra", "extra.seed"} and set(diff.allowed) == {"extra.device", "extra.epochs"}
    assert resume_diff(Run, _cfg(runs={"a": "1"}), _cfg(runs={"a": "2"})).conflicts == {"runs.a": ("1", "2")}


def test_unknown_and_missing_fields():
    stored, new = _cfg(), _cfg()
    # a field the dataclass does not know must stay equal, and so must one on one side only ...
    stored["old_field"], new["old_field"] = 1, 2
    del new["train"]["seed"]
    diff = resume_diff(Run, stored, new)
    assert set(diff.conflicts) == {"old_field", "train.seed"}
    assert "train.seed (0 -> absent)" in ResumeDiff.describe(diff.conflicts)
    # ... unless a resume may change it: a run stored before a free field existed resumes
    stored = _cfg()
    del stored["jobs"]
    diff = check_resume(Run, stored, _cfg(jobs=2), "r")
    assert "jobs" in diff.free and "jobs" in diff.apply(stored)


def test_a_misspelt_rule_is_a_programming_error():
    @dataclass
    class Bad:
        x: int = field(default=0, metadata={"resume": "fre"})
    with pytest.raises(ValueError, match="resume rule 'fre'"):
        resume_diff(Bad, {"x": 0}, {"x": 1})


def test_rundir_check_resume_reads_config_json(tmp_path):
    rd = RunDir(tmp_path / "run", _cfg())
    assert rd.check_resume(Run, _cfg(jobs=3)).free == {"jobs": (1, 3)}
    with pytest.raises(CGNError, match=r"run holds a run with other settings: .*train\.seed \(0 -> 1\)"):
        rd.check_resume(Run, _cfg(train__seed=1))
    assert not rd.check_resume(Run, _cfg(train__seed=1), stored=_cfg(train__seed=1)).conflicts


def _rules(cls, prefix=""):
    out = {}
    for f in dataclasses.fields(cls):
        sub = _dataclass_in(_field_types(cls)[f.name])
        if "resume" in f.metadata:
            out[prefix + f.name] = f.metadata["resume"]
        elif sub is not None:
            out.update(_rules(sub, prefix + f.name + "."))
    return out


def test_each_config_lets_change_what_its_command_did_before():
    from cgn.imagenet.classifier_config import ClassifierTrainConfig
    from cgn.imagenet.config import ImageNetCGNConfig
    from cgn.imagenet.generate import DatasetSpec
    from cgn.mnist.config import CGNTrainConfig
    from cgn.mnist.counterfactuals import Generation
    from cgn.mnist.reproduce import ReproduceConfig
    # loss.precision, train.gan_precision: like the thread count, only the rounding of the steps
    # still to run
    assert _rules(CGNTrainConfig) == {"train.epochs": "extend", "train.max_steps": "extend",
                                      "train.device": "free", "train.threads": "free",
                                      "train.gan_precision": "free", "loss.precision": "free"}
    assert _rules(ImageNetCGNConfig) == {"train.episodes": "extend", "train.keep_every": "free",
                                        "train.precision": "free"}
    assert _rules(ClassifierTrainConfig) == {
        **{k: "free" for k in ("data.train_dir", "data.val_dir", "data.cf_dir", "data.class_index",
                               "data.workers", "model.weights_file", "eval.cue_conflict_dir",
                               "eval.in9_dir", "eval.batch_size", "device", "threads",
                               "checkpoint_every", "log_every", "tensorboard")},
        "max_steps": "extend"}
    # precision: a set keeps the precision it started in (its manifest), so a rerun may ask for auto
    assert _rules(ReproduceConfig) == {"jobs": "free", "threads": "free", "ablation_sizes": "extend",
                                       "precision": "free"}
    assert _rules(Generation) == {"config.batch_size": "free"}
    assert _rules(DatasetSpec) == {}


def test_imagenet_resume_keeps_the_checkpoints_config_except_its_length(tmp_path):
    """`cgn imagenet train --resume` hands every --set to the trainer, which keeps what a resume
    may not change (and says so in the log) and takes the new length."""
    from cgn.cli import main
    from cgn.core.checkpoint import load_checkpoint
    out = tmp_path / "run"
    sets = ["--set", "model.tiny_resolution=8", "--set", "loss.text_work_size=8", "--set", "loss.text_top=10"]
    assert main(["imagenet", "train", "--preset", "tiny", "--out", str(out), "--episodes", "1",
                 "--batch-acc", "1", "--quiet", *sets]) == 0
    assert main(["imagenet", "train", "--out", str(out), "--resume", "--quiet",
                 "--set", "train.seed=5", "--set", "train.episodes=2"]) == 0
    ck = load_checkpoint(out / "checkpoints/last.pt", kind="imagenet-cgn")
    assert ck["step"] == 2 and ck["config"]["train"]["seed"] == 0 and ck["config"]["train"]["episodes"] == 2
    assert "a resume may not change train.seed (0 -> 5); using the stored values" in (out / "log.txt").read_text()


def test_stand_ins_run_control_is_declared_once_and_keeps_its_paths():
    """The stand-ins' trainers share their run-control fields (cgn.core.runcontrol): same help,
    same resume rule, flat in one config and under train. in the others, as before."""
    from cgn.cliargs import field_of
    from cgn.config import from_dict
    from cgn.core import runcontrol
    from cgn.imagenet.biggan_pretrain_config import BigGANPretrainConfig
    from cgn.imagenet.u2net_config import U2NetTrainConfig
    from cgn.imagenet.world_judges_config import JudgesConfig
    from cgn.mnist.config import CGNTrainConfig
    run = {"eval_batch_size": "free", "log_every": "free", "checkpoint_every": "free",
           "device": "free", "threads": "free"}
    assert _rules(JudgesConfig) == {"epochs": "extend", "limit_test": "free", **run}
    assert _rules(U2NetTrainConfig) == {
        "data.train": "free", "data.test": "free", "train.epochs": "extend",
        "train.max_steps": "extend", "train.limit_test": "free", "train.eval_images": "free",
        "train.eval_every": "free", **{f"train.{k}": v for k, v in run.items()}}
    assert _rules(BigGANPretrainConfig) == {
        "train.data": "free", "train.steps": "extend", "train.precision": "free",
        **{f"train.{k}": "free" for k in ("sample_truncation", "sample_per_class", "sample_every",
                                          "stats_batches", "log_every", "checkpoint_every",
                                          "device", "threads")}}
    for name in ("device", "threads", "log_every"):
        where = [(JudgesConfig, name), (U2NetTrainConfig, f"train.{name}"),
                 (BigGANPretrainConfig, f"train.{name}")]
        if name != "log_every":  # the MNIST CGN's log_every is not free (see above)
            where.append((CGNTrainConfig, f"train.{name}"))
        metas = {str(field_of(cls, path)[0].metadata) for cls, path in where}
        assert len(metas) == 1, (name, metas)
    assert field_of(JudgesConfig, "threads")[0].metadata["help"] == runcontrol.THREADS_HELP
    with pytest.raises(CGNError, match="threads must be >= 0"):
        from_dict(JudgesConfig, {"threads": -1})
    with pytest.raises(CGNError, match="checkpoint_every must be >= 1"):  # no epochs: >= 1
        from_dict(BigGANPretrainConfig, {"train": {"checkpoint_every": 0}})
    assert from_dict(U2NetTrainConfig, {"train": {"checkpoint_every": 0}}).train.checkpoint_every == 0
