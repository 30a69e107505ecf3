"""Every option is defined once (spa_keras.config.OPTIONS): the API, the callback and the command line
agree with it, and the defects a close read found stay fixed."""

import inspect
import os
import re
import subprocess
import sys

import keras
import numpy as np
import pytest
from keras import layers as L

import spa_keras as spa
from spa_keras import cli, config
from spa_keras.config import DATA, RECIPE, RUN, OPTIONS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "spa_keras")


def _actions(command):
    parser = cli._parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    return sub, {a.dest: a for a in sub._actions}


@pytest.mark.parametrize("command", ["prune", "bench", "demo"])
def test_the_command_line_has_a_flag_for_every_option_with_its_name_default_and_help(command):
    sub, actions = _actions(command)
    for o in OPTIONS:
        if o.cli is None or o.kind == RUN:
            continue
        a = actions[o.name]
        assert o.flag in a.option_strings, (o.name, a.option_strings)  # the name in kebab case
        assert set(o.aliases) <= set(a.option_strings)
        assert a.help.startswith(o.help), o.name
        assert a.default == ([] if a.__class__.__name__.startswith("_Append") else o.default), o.name
        if o.choices is not None:
            assert set(a.choices) >= {c for c in o.choices() if c is not None}, o.name
    # nothing parsed: the config's defaults
    args = sub.parse_args(["m.keras", "-o", "x.keras"] if command == "prune" else
                          (["m.keras"] if command == "bench" else []))
    assert cli._config(args) == spa.PruningConfig()


def test_parsed_flags_make_the_same_config_as_the_keywords():
    parser = cli._parser()
    args = parser.parse_args([
        "prune", "m.keras", "-o", "s.keras", "--ratio", "0.3", "--criterion", "lamp", "--global-pruning",
        "--ignored-layers", "a", "--ignore", "b", "--round-to", "8", "--max-ratio", "0.9", "--normalization", "none",
        "--ratio-per-layer", "conv*=0.2", "--target-params", "0.6", "--steps", "2", "--algorithm", "obspa",
        "--calibration-samples", "64", "--data-free", "random", "--algorithm-options", "damp=0.001",
        "--algorithm-options", "blocks=8", "--group-reduction", "max", "--loss", "mse", "--force",
    ])
    want = spa.PruningConfig(ratio=0.3, criterion="lamp", global_pruning=True, ignored_layers=["a", "b"], round_to=8,
                             max_ratio=0.9, normalization=None, ratio_per_layer={"conv*": 0.2}, target_params=0.6,
                             steps=2, algorithm="obspa", calibration_samples=64, data_free="random",
                             algorithm_options={"damp": 0.001, "blocks": 8}, group_reduction="max")
    assert cli._config(args) == want
    assert args.loss == "mse" and args.overwrite  # --force is the old name of --overwrite
    for choices in (["--algorithm", "obspa", "--algorithm", "nope"], ["--criterion", "l3"], ["--data-free", "x"]):
        with pytest.raises(SystemExit):
            parser.parse_args(["prune", "m.keras", "-o", "s.keras", *choices])


def test_every_option_default_is_written_in_one_place_only():
    """No function of the package repeats an option's default in its signature (``ratio=0.5``): the
    default lives in config.OPTIONS and nowhere else."""
    import ast

    wanted = {o.name: o.default for o in OPTIONS if o.default not in (None, False)}
    found = []
    for folder, _, files in os.walk(PACKAGE):
        for f in files:
            if not f.endswith(".py") or f == "config.py":
                continue
            path = os.path.join(folder, f)
            for node in ast.walk(ast.parse(open(path).read())):
                if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    continue
                args = node.args.args + node.args.kwonlyargs
                defaults = [None] * (len(node.args.args) - len(node.args.defaults)) + node.args.defaults
                defaults += node.args.kw_defaults
                for arg, default in zip(args, defaults):
                    if arg.arg in wanted and isinstance(default, ast.Constant) and default.value == wanted[arg.arg]:
                        found.append(f"{os.path.relpath(path, ROOT)}:{node.lineno} {node.name}({arg.arg}=...)")
    assert not found, found


def test_the_derived_signatures_show_the_options_with_the_same_defaults():
    for fn, kinds in ((spa.plan, (RECIPE, DATA)), (spa.prune, (RECIPE, DATA, RUN))):
        params = inspect.signature(fn).parameters
        for name in config.names(*kinds):
            assert params[name].default == config.BY_NAME[name].default, (fn.__name__, name)
    assert inspect.signature(spa.plan).parameters["verbose"].default is None
    assert inspect.signature(spa.PruningConfig).parameters["ratio"].default == 0.5


def test_a_string_for_ignored_layers_is_refused_clearly_everywhere():
    inp = keras.Input((8,))
    model = keras.Model(inp, L.Dense(2)(L.Dense(8, name="conv1")(inp)))
    for call in (lambda: spa.plan(model, ignored_layers="conv1"), lambda: spa.PruningConfig(ignored_layers="conv1"),
                 lambda: spa.Pruner(ignored_layers="conv1")):
        with pytest.raises(spa.InvalidArgumentError, match="ignored_layers must be a list of layer names, got 'conv1'"):
            call()
    assert spa.plan(model, ignored_layers=["conv1"], ratio=0.5).n_removed == 0


def test_unknown_keywords_name_the_closest_option():
    with pytest.raises(spa.InvalidArgumentError, match="spa.prune has no option 'ignore_layers'.*'ignored_layers'"):
        spa.prune(keras.Sequential([keras.Input((2,)), L.Dense(2)]), ignore_layers=["x"])


def test_verbose_means_the_same_everywhere(capsys):
    model = keras.Sequential([keras.Input((8,)), L.Dense(16, name="a"), L.Dense(2)])
    for prune in (lambda **kw: spa.prune(model, ratio=0.5, **kw), lambda **kw: spa.Pruner(ratio=0.5).prune(model, **kw)):
        prune()
        assert "MACs" not in capsys.readouterr().out  # the default (None): no table
        prune(verbose=True)
        assert "MACs" in capsys.readouterr().out
    assert inspect.signature(spa.prune).parameters["verbose"].default is None


def test_the_callback_takes_a_config_and_a_parameter_target():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8,)), L.Dense(32, activation="relu", name="h"), L.Dense(3)])
    model.compile("adam", "sparse_categorical_crossentropy")
    cb = spa.callbacks.PruningCallback(spa.PruningConfig(target_params=0.5, criterion="l1"), schedule="constant")
    assert cb.config.criterion == "l1" and cb.get_config()["config"]["target_params"] == 0.5
    x, y = np.random.default_rng(0).standard_normal((64, 8)).astype("float32"), np.zeros(64, "int32")
    history = model.fit(x, y, epochs=2, verbose=0, callbacks=[cb])
    assert abs(history.history["pruning_params_fraction"][-1] - 0.5) < 0.02
    slim = spa.strip(model)
    assert abs(slim.count_params() / model.count_params() - 0.5) < 0.02
    with pytest.raises(spa.InvalidArgumentError, match="PruningCallback has no option 'target_param'"):
        spa.callbacks.PruningCallback(target_param=0.5)


def test_the_help_answers_without_tensorflow_and_the_log_level_is_set_first():
    code = ("import sys, os; os.environ.pop('TF_CPP_MIN_LOG_LEVEL', None); import spa_keras.cli as c; "
            "c._parser().format_help(); import spa_keras; "
            "print(sorted(m for m in ('tensorflow', 'keras', 'onnx', 'tf2onnx', 'torch') if m in sys.modules)); "
            "print(os.environ.get('TF_CPP_MIN_LOG_LEVEL'))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, PYTHONPATH=ROOT))
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[:2] == ["[]", "2"], r.stdout


def test_a_missing_optional_package_names_the_command_that_installs_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "tf2onnx", None)
    model = keras.Sequential([keras.Input((2,)), L.Dense(2)])
    with pytest.raises(spa.MissingDependencyError, match=r"tf2onnx.*pip install tf2onnx"):
        spa.to_onnx(model)


def test_existing_report_files_and_onnx_targets_are_output_exists_errors(tmp_path):
    model = keras.Sequential([keras.Input((4,)), L.Dense(8, name="h"), L.Dense(2)])
    (tmp_path / "r.txt").write_text("precious")
    with pytest.raises(spa.OutputExistsError, match="r.txt"):
        spa.prune(model, report=str(tmp_path / "r"))
    path = str(tmp_path / "m.keras")
    model.save(path)
    onnx_out = tmp_path / "m.onnx"
    onnx_out.write_bytes(b"precious")
    assert cli.main(["-q", "export", path, "--onnx", str(onnx_out)]) == 2
    assert onnx_out.read_bytes() == b"precious" and (tmp_path / "r.txt").read_text() == "precious"


def test_demo_takes_steps_and_bench_is_quiet(capfd):
    assert cli.main(["demo", "--model", "MobileNetV2", "--size", "32", "--steps", "2", "--ratio", "0.3"]) == 0
    out, err = capfd.readouterr()
    assert "(2 steps)" in out and "fewer" in out
    assert "|" not in out  # the bars are on stderr
    path = "/tmp/_spa_bench_quiet.keras"
    keras.Sequential([keras.Input((4,)), L.Dense(8), L.Dense(2)]).save(path)
    assert cli.main(["-q", "bench", path, "--repeats", "2", "--warmup", "0", "--algorithm", "obspa",
                     "--algorithm-options", "synthetic_steps=2", "--calibration-samples", "8"]) == 0
    out, err = capfd.readouterr()
    assert "speed-up" in out and "it/s" not in err and "sample/s" not in err and "%|" not in err, err


TF_IMPORT_LOG = re.compile(r"(WARNING: All log messages before absl::InitializeLog\(\)|[IWEF]\d{4} \S+ +\d+ \S+\.cc:\d+\] )")


def test_on_a_terminal_the_table_starts_on_a_clean_line():
    """The stage bar and the algorithms' bars are gone before the table is printed: no bar, and no
    blank line they left, comes before it (run in a pseudo-terminal, as a user sees it)."""
    import pty

    main, child = pty.openpty()
    p = subprocess.Popen([sys.executable, "-m", "spa_keras", "demo", "--model", "MobileNetV2", "--size", "32",
                          "--algorithm", "obspa", "--data-free", "random", "--calibration-samples", "8"],
                         stdout=child, stderr=child, env=dict(os.environ, PYTHONPATH=ROOT), cwd=ROOT)
    os.close(child)
    chunks = []
    while True:
        try:
            data = os.read(main, 4096)
        except OSError:  # the child closed its end
            break
        if not data:
            break
        chunks.append(data)
    assert p.wait(timeout=600) == 0
    text = b"".join(chunks).decode(errors="replace")
    before = text[: text.index("layer ")]
    # TensorFlow's own C++ lines at import (on CPUs where it turns oneDNN on, "oneDNN custom operations are
    # on", whatever TF_CPP_MIN_LOG_LEVEL says) are not the bars this test is about
    lines = [line for line in before.replace("\r\n", "\n").split("\n") if not TF_IMPORT_LOG.match(line)]
    assert all(line.strip("\r ") == "" or "\r" in line for line in lines[:-1]) and lines.count("") <= 1, repr(before)
    assert "%|" not in text[text.index("layer "):]


def test_the_options_page_is_made_from_the_options():
    with open(os.path.join(ROOT, "docs", "options.md")) as f:
        assert f.read() == config.options_page(), "run: python -m spa_keras.config > docs/options.md"


def test_spa_keras_works_without_keras_hub():
    code = ("import sys; sys.modules['keras_hub'] = None; import keras, spa_keras as spa; "  # as if not installed
            "m = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16), keras.layers.Dense(2)]); "
            "print(spa.prune(m, ratio=0.5).count_params())")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2"))
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().splitlines()[-1] == str(8 * 8 + 8 + 8 * 2 + 2)
