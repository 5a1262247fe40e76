"""The command line as its users expect it (issue 19): every default in --help, -q / -v anywhere, train's
hyper-parameters from flags and a validated TOML file, a missing extra named in one line, extras that match
pyproject.toml."""

import argparse
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from edge_rerank.cli import build_parser, train_configs
from edge_rerank.cloud.training.configs import LOSS_NAMES, ModelConfig, TrainConfig, read_config_file
from edge_rerank.device_sdk.extras import EXTRAS, MODULE_EXTRA, install_hint

ROOT = Path(__file__).resolve().parents[1]


def _subparsers(p: argparse.ArgumentParser):
    for a in p._actions:
        if isinstance(a, argparse._SubParsersAction):
            for name, sp in a.choices.items():
                yield name, sp
                for sub_name, sub_sp in _subparsers(sp):
                    yield f"{name} {sub_name}", sub_sp


def test_every_option_with_a_default_says_it_in_help():
    """An option that has a value when not given shows it once (no doubled "(default: ...) (default: None)")."""
    missing, doubled = [], []
    for name, sp in [("", build_parser()), *_subparsers(build_parser())]:
        text = " ".join(sp.format_help().split())
        doubled += [name] * text.count("(default: None)")
        for a in sp._actions:
            if not a.option_strings or a.nargs == 0 or a.default in (None, argparse.SUPPRESS):
                continue
            line = a.help or ""
            if "default" not in line and f"(default: {a.default})" not in text:
                missing.append(f"{name} {a.option_strings[0]}")
        if "%%" in (sp.description or ""):
            doubled.append(f"{name}: %% in description")
    assert not missing, f"options whose default --help does not show: {missing}"
    assert not doubled, doubled


def test_quiet_and_verbose_anywhere_and_quiet_hides_progress(tmp_path):
    p = build_parser()
    logs = str(ROOT)
    assert p.parse_args(["train", "--logs", logs, "-q"]).quiet is True
    assert p.parse_args(["-v", "train", "--logs", logs]).verbose is True
    a = p.parse_args(["train", "--logs", logs])
    assert a.quiet is False and a.verbose is False
    with pytest.raises(SystemExit):
        p.parse_args(["train", "--logs", logs, "-q", "-v"])
    r = subprocess.run([sys.executable, "-m", "edge_rerank.cli", "-q", "train", "--logs", logs, "-v"],
                       capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 2 and "contradict" in r.stderr and "Traceback" not in r.stderr


def _train_args(*extra: str):
    return build_parser().parse_args(["train", "--logs", str(ROOT), *extra])


def test_train_configs_defaults_then_file_then_flags(tmp_path):
    t, m, s = train_configs(_train_args())
    assert (t.epochs, t.lr, t.batch_size, t.seed) == (15, TrainConfig.lr, TrainConfig.batch_size, 0)
    assert m == ModelConfig() and (s.valid_share, s.test_share, s.seed) == (0.15, 0.15, 0)
    f = tmp_path / "train.toml"
    f.write_text('[train]\nlr = 0.002\nbatch_size = 64\npatience = 7\nseed = 3\n'
                 '[model]\nuse_feedback = true\nviews = ["id", "attr"]\ndropout = 0\n[split]\nvalid_share = 0.2\n')
    t, m, s = train_configs(_train_args("--config", str(f)))
    assert (t.lr, t.batch_size, t.patience, t.seed, t.epochs) == (0.002, 64, 7, 3, 15)
    assert m.use_feedback and m.views == ("id", "attr") and m.dropout == 0
    assert (s.valid_share, s.seed) == (0.2, 3)
    t, m, s = train_configs(_train_args("--config", str(f), "--lr", "0.01", "--seed", "9", "--no-residual",
                                        "--views", "context", "--test-share", "0.1", "--epochs", "2"))
    assert (t.lr, t.batch_size, t.seed, t.epochs) == (0.01, 64, 9, 2)
    assert not m.residual and m.use_feedback and m.views == ("context",)
    assert (s.valid_share, s.test_share, s.seed) == (0.2, 0.1, 9)


@pytest.mark.parametrize("text,message", [
    ("[train]\nlearning_rate = 0.1\n", "unknown key(s) ['learning_rate'] in [train]"),
    ("[optimizer]\nlr = 0.1\n", "unknown section [optimizer]"),
    ("train = 3\n", "must be a table"),
    ("[train]\nbatch_size = 2.5\n", "batch_size must be an int"),
    ("[train]\nbatch_size = true\n", "batch_size must be an int"),
    ("[train]\nlr = nan\n", "lr must be a finite number"),
    ("[train]\nlr = -1.0\n", "lr must be > 0"),
    ("[train]\nepochs = 0\n", "epochs must be at least 1"),
    ("[train]\nthreads = 1000000000\n", "threads must be at most 1,024"),
    ("[model]\nd_model = 9223372036854775807\n", "d_model must be at most 4,096"),
    ("[train]\nloss = \"hinge\"\n", "loss must be one of"),
    ("[train]\nthreads = \"2\"\n", "threads must be an int"),
    ("[model]\nviews = [\"id\", 3]\n", "views must be a list of strings"),
    ("[model]\nviews = [\"nose\"]\n", "views must be a non-empty subset"),
    ("[model]\ndropout = 1.5\n", "dropout must be in [0, 1)"),
    ("[model]\nd_model = {a = 1}\n", "d_model must be an int"),
    ("[split]\nvalid_share = 0.9\n", "split shares"),
    ("[train\nlr = 1\n", "not valid TOML"),
    ("\udcff", "not valid TOML"),
])
def test_bad_config_files_are_refused_naming_what(tmp_path, text, message):
    f = tmp_path / "bad.toml"
    f.write_bytes(text.encode("utf-8", "surrogateescape"))
    with pytest.raises(ValueError) as e:
        read_config_file(f)
    assert message in str(e.value) and str(f) in str(e.value)


def test_huge_or_missing_config_files_are_refused(tmp_path):
    f = tmp_path / "huge.toml"
    f.write_text("[train]\n" + "# padding\n" * 200_000)
    with pytest.raises(ValueError, match="more than"):
        read_config_file(f)
    with pytest.raises(ValueError, match="no such file"):
        read_config_file(tmp_path / "none.toml")


def test_a_bad_config_is_one_line_and_exit_2_before_training(tmp_path):
    f = tmp_path / "bad.toml"
    f.write_text("[train]\nbatch = 3\n")
    r = subprocess.run([sys.executable, "-m", "edge_rerank.cli", "train", "--logs", str(tmp_path), "--config", str(f),
                        "--out", str(tmp_path / "o")], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 2 and "unknown key(s) ['batch']" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "o").exists()


def test_configs_refuse_wrong_types_from_python_too():
    with pytest.raises(ValueError, match="epochs must be an int"):
        TrainConfig(epochs=2.0)
    with pytest.raises(ValueError, match="patience must be at least 1"):
        TrainConfig(patience=0)
    assert ModelConfig(views=["id"]).views == ("id",)  # lists (JSON, TOML) become tuples


def test_loss_names_match_the_losses():
    pytest.importorskip("torch")
    from edge_rerank.cloud.training.losses import LOSSES

    assert set(LOSS_NAMES) == set(LOSSES)


def test_a_missing_extra_is_one_line_naming_it(tmp_path):
    """`simulate` in an install without the [cloud] extra: which module, which extra, exit 3, no traceback. The
    missing module is made missing for real (an import of it fails) in a child process."""
    code = ("import sys; sys.modules['flask'] = None; from edge_rerank.cli import main; "
            f"sys.exit(main(['simulate', '--out', {str(tmp_path / 'o')!r}, '--sessions', '1']))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 3, r.stderr[-2000:]
    assert "'flask'" in r.stderr and "pip install 'edge-rerank[cloud]'" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def _requirement_names(reqs: list[str]) -> set[str]:
    import re

    return {re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].lower().replace("_", "-") for r in reqs}


def test_the_extras_table_matches_pyproject():
    """Each extra the hints name exists, and each module's extra really installs the distribution that provides
    that module (checked against this environment's installed distributions)."""
    import importlib.metadata as md

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert set(EXTRAS) == set(extras) - {"all", "dev"}
    (everything,) = extras["all"]
    assert set(everything.split("[", 1)[1].rstrip("]").split(",")) == set(EXTRAS)  # `all` is every extra
    dists = md.packages_distributions()
    for module, extra in MODULE_EXTRA.items():
        provided_by = {d.lower().replace("_", "-") for d in dists.get(module, [])}
        if not provided_by:
            continue  # not installed here: nothing to check against
        assert provided_by & _requirement_names(extras[extra]), (module, extra, provided_by)
    assert install_hint(["flask.json", "torch"]) == "pip install 'edge-rerank[cloud,train]'"
    assert install_hint(["onnx"]).endswith("[train]'")  # the onnx *package* (export), not the [onnx] runtime extra
    assert install_hint(["no_such_module"]) == "" and install_hint(["x"], fallback="mnn").endswith("[mnn]'")


def test_global_flags_after_nested_subcommands_and_the_issue_aliases():
    p = build_parser()
    assert p.parse_args(["fusion", "train", "-q"]).quiet is True
    assert p.parse_args(["logs", "validate", str(ROOT), "-v"]).verbose is True
    a = p.parse_args(["coarse", "train", "--data-dir", str(ROOT), "--logs", str(ROOT), "--out", "o", "--no-progress"])
    assert a.no_progress is True and a.coarse_command == "train"
    alias = p.parse_args(["train-coarse", "--data-dir", str(ROOT), "--logs", str(ROOT), "--out", "o"])
    assert alias.func is a.func and alias.coarse_command == "train"
    assert {k: v for k, v in vars(alias).items() if k != "command"} == {
        k: v for k, v in vars(p.parse_args(["coarse", "train", "--data-dir", str(ROOT), "--logs", str(ROOT),
                                            "--out", "o"])).items() if k != "command"}
    assert p.parse_args(["train-fusion", "-q"]).fusion_command == "train"
