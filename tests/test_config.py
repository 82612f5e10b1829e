"""experiments.yaml: validation, resolution and every error path (exit 2, one line)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO, assert_one_line_error
from flower_exp.config import ExperimentConfig, describe_fields, load_experiment, load_sweep
from flower_exp.errors import ConfigError


def write_config(folder: Path, text: str) -> Path:
    path = folder / "experiments.yaml"
    path.write_text(text)
    return path


VALID = """
default: mine
experiments:
  mine:
    data_dir: data
    classes: [a, b, c]
    image_size: 48
  remote:
    classes_file: builtin:petals
"""


@pytest.fixture
def project(tmp_path):
    (tmp_path / "data").mkdir()
    write_config(tmp_path, VALID)
    return tmp_path


def test_resolves_relative_paths_against_config_folder(project):
    exp = load_experiment(config=project / "experiments.yaml")
    assert exp.name == "mine"
    assert exp.data_dir == str(project / "data")
    assert exp.cache_dir == str(project / "mlruns" / "cache")
    assert exp.class_names == ["a", "b", "c"]
    assert exp.config.image_size == 48
    assert exp.config.augment.flip is True  # default filled in


def test_data_dir_from_gcs_ds_path_and_builtin_classes(project):
    exp = load_experiment("remote", project / "experiments.yaml", env={"GCS_DS_PATH": "gs://bucket/flowers"})
    assert exp.data_dir == "gs://bucket/flowers"
    assert len(exp.class_names) == 104
    assert exp.class_names[0] == "pink primrose"


def test_overrides_apply_nested_and_revalidate(project):
    exp = load_experiment(config=project, overrides=["image_size=96", "augment.flip=false", "augment.crop_scale=1"])
    assert exp.config.image_size == 96
    assert exp.config.augment.flip is False
    assert exp.config.augment.crop_scale == 1.0
    with pytest.raises(ConfigError, match=r"--set augment\.nope: unknown key; allowed: .*brightness"):
        load_experiment(config=project, overrides=["augment.nope=1"])
    with pytest.raises(ConfigError, match="expected key=value"):
        load_experiment(config=project, overrides=["image_size"])
    with pytest.raises(ConfigError, match=r"image_size: Input should be greater than 0"):
        load_experiment(config=project, overrides=["image_size=0"])


def test_every_field_has_a_description():
    rows = describe_fields(ExperimentConfig)
    assert {"image_size", "augment.flip", "leakage.max_distance"} <= {key for key, _, _ in rows}
    missing = [key for key, _, desc in rows if not desc]
    assert not missing, missing


def test_shipped_experiments_yaml_is_packaged_copy():
    repo_copy = (REPO / "experiments.yaml").read_text()
    packaged = (REPO / "flower_exp" / "resources" / "experiments.yaml").read_text()
    assert repo_copy == packaged, "flower_exp/resources/experiments.yaml must equal experiments.yaml"
    loaded = yaml.safe_load(repo_copy)
    assert {"demo", "petals"} <= set(loaded["experiments"])


def test_yaml_is_read_with_safe_load(tmp_path):
    write_config(tmp_path, "experiments: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="malformed YAML"):
        load_experiment(config=tmp_path)


# ----------------------------------------------------------------- CLI error paths


def test_config_show_resolves_defaults(cli, project):
    result = cli("config", "show", cwd=project)
    assert result.returncode == 0, result.stderr
    shown = yaml.safe_load(result.stdout)
    assert shown["data_dir"] == str(project / "data")
    assert shown["augment"]["crop_scale"] == 0.85
    result = cli("config", "show", "-e", "remote", "--json", cwd=project, env={"GCS_DS_PATH": "gs://b/x"})
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["experiment"]["data_dir"] == "gs://b/x"
    assert len(payload["experiment"]["classes"]) == 104


def test_config_show_uses_packaged_default_outside_a_project(cli, tmp_path):
    result = cli("config", "show", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    shown = yaml.safe_load(result.stdout)
    assert shown["name"] == "demo"
    assert shown["data_dir"] == str(tmp_path / "data" / "demo")


def test_config_keys_lists_descriptions(cli, tmp_path):
    result = cli("config", "keys", cwd=tmp_path)
    assert result.returncode == 0
    assert "augment.crop_scale" in result.stdout and "Random crop/zoom" in result.stdout


ERROR_CASES = {
    "malformed": ("experiments:\n  demo: [unclosed\n", [], "malformed YAML"),
    "empty": ("", [], "empty file"),
    "duplicate_key": (
        "experiments:\n  x: {data_dir: .}\nexperiments: {}\n",
        [],
        "line 3: duplicate key 'experiments' (first on line 1)",
    ),
    "not_a_mapping": ("- a\n- b\n", [], "(top level)"),
    "unknown_top_key": ("experimants: {}\n", [], "experimants: unknown key; allowed: default, experiments"),
    "unknown_nested_key": (
        "experiments:\n  x:\n    data_dir: .\n    classes: [a]\n    augment: {flipp: true}\n",
        ["-e", "x"],
        "experiments.x.augment.flipp: unknown key; allowed: enabled, flip, crop_scale, brightness, contrast",
    ),
    "wrong_type": (
        "experiments:\n  x:\n    data_dir: .\n    classes: [a]\n    image_size: big\n",
        ["-e", "x"],
        "experiments.x.image_size: Input should be a valid integer",
    ),
    "negative_size": (
        "experiments:\n  x:\n    data_dir: .\n    classes: [a]\n    image_size: -1\n",
        ["-e", "x"],
        "experiments.x.image_size: Input should be greater than 0 (got -1)",
    ),
    "crop_out_of_range": (
        "experiments:\n  x:\n    data_dir: .\n    classes: [a]\n    augment: {crop_scale: 1.5}\n",
        ["-e", "x"],
        "experiments.x.augment.crop_scale: Input should be less than or equal to 1",
    ),
    "missing_data_dir": (
        "experiments:\n  x:\n    classes: [a]\n",
        ["-e", "x"],
        "experiments.x.data_dir: not set; set data_dir in the file or export GCS_DS_PATH",
    ),
    "data_dir_does_not_exist": (
        "experiments:\n  x:\n    data_dir: nowhere\n    classes: [a]\n",
        ["-e", "x"],
        "experiments.x.data_dir:",
    ),
    "unknown_experiment": (
        "experiments:\n  x:\n    data_dir: .\n    classes: [a]\n",
        ["-e", "nope"],
        "experiments.nope: unknown experiment; allowed: x",
    ),
    "bad_default": (
        "default: demo\nexperiments:\n  x:\n    data_dir: .\n",
        [],
        "default: 'demo' is not an experiment; allowed: x",
    ),
    "classes_twice": (
        "experiments:\n  x:\n    data_dir: .\n    classes: [a]\n    classes_file: c.txt\n",
        ["-e", "x"],
        "set either classes or classes_file, not both",
    ),
    "unknown_builtin_classes": (
        "experiments:\n  x:\n    data_dir: .\n    classes_file: builtin:roses\n",
        ["-e", "x"],
        "experiments.x.classes_file: unknown builtin 'builtin:roses'; allowed: builtin:petals",
    ),
    "extra_data_bad_split": (
        "experiments:\n  x:\n    data_dir: .\n    classes: [a]\n    extra_data: [{path: ., splits: [test]}]\n",
        ["-e", "x"],
        "experiments.x.extra_data.0.splits: unknown split 'test'; allowed: train, val",
    ),
    "extra_data_unknown_key": (
        "experiments:\n  x:\n    data_dir: .\n    classes: [a]\n    extra_data: [{path: ., split: [train]}]\n",
        ["-e", "x"],
        "experiments.x.extra_data.0.split: unknown key; allowed: path, splits",
    ),
}


@pytest.mark.parametrize("case", sorted(ERROR_CASES))
def test_config_errors_exit_2_with_one_line(cli, tmp_path, case):
    text, args, fragment = ERROR_CASES[case]
    path = write_config(tmp_path, text)
    result = cli("config", "show", *args, cwd=tmp_path)
    assert_one_line_error(result, str(path), fragment)


def test_missing_config_file_and_bad_set(cli, project, tmp_path):
    assert_one_line_error(cli("--config", str(tmp_path / "nope.yaml"), "config", "show"), "nope.yaml: config file not found")
    assert_one_line_error(cli("config", "show", "--set", "augment.flipp=1", cwd=project), "--set augment.flipp: unknown key")
    assert_one_line_error(cli("config", "show", "--set", "image_size=x", cwd=project), "--set experiments.mine.image_size")


def test_unreadable_file_is_a_user_error(cli, tmp_path):
    (tmp_path / "experiments.yaml").write_bytes(b"\xff\xfe\x00bad")
    assert_one_line_error(cli("config", "show", cwd=tmp_path), "cannot read")


# ----------------------------------------------------------------- sweep values against the setting's type


@pytest.fixture
def experiment(project):
    return load_experiment(config=project / "experiments.yaml").config


# name: (sweep file text, error fragment after "<file>: ")
SWEEP_VALUE_CASES = {
    "int_setting_float_bound": (
        "params: {epochs: {low: 1, high: 2.0}}\n",
        "params.epochs: 'epochs' is an integer setting; allowed: integer low, high and step",
    ),
    "int_setting_float_step": (
        "params: {epochs: {low: 1, high: 4, step: 1.0}}\n",
        "params.epochs: 'epochs' is an integer setting",
    ),
    "infinite_bound": ("params: {lr_max: {low: 1.0e-4, high: .inf}}\n", "params.lr_max.high: Input should be a finite number"),
    "nan_bound": ("params: {lr_max: {low: .nan, high: 1.0}}\n", "params.lr_max.low: Input should be a finite number"),
    "enqueue_string_for_int_choice": (
        "params: {cnn_width: {choices: [8, 16]}}\nenqueue: [{cnn_width: '16'}]\n",
        "enqueue.0.cnn_width: '16' is not one of the choices; allowed: [8, 16]",
    ),
    "enqueue_float_for_int_setting": (
        "params: {epochs: {low: 1, high: 4}}\nenqueue: [{epochs: 2.5}]\n",
        "enqueue.0.epochs: 2.5 has the wrong type for 'epochs'; allowed: integer",
    ),
    "string_choice_for_int_setting": (
        "params: {cnn_width: {choices: ['8', 16]}}\n",
        "params.cnn_width: '8' has the wrong type for 'cnn_width'; allowed: integer",
    ),
    "fixed_float_for_int_setting": (
        "params: {cnn_width: {choices: [8]}}\nfixed: {epochs: 2.0}\n",
        "fixed.epochs: 2.0 has the wrong type for 'epochs'; allowed: integer",
    ),
    "fixed_int_for_bool_setting": (
        "params: {cnn_width: {choices: [8]}}\nfixed: {jit_compile: 1}\n",
        "fixed.jit_compile: 1 has the wrong type for 'jit_compile'; allowed: boolean",
    ),
    "fixed_infinite": (
        "params: {cnn_width: {choices: [8]}}\nfixed: {lr_max: .inf}\n",
        "fixed.lr_max: value inf is invalid (Input should be a finite number",
    ),
}


@pytest.mark.parametrize("case", sorted(SWEEP_VALUE_CASES))
def test_sweep_values_are_checked_against_the_setting_type(tmp_path, experiment, case):
    text, fragment = SWEEP_VALUE_CASES[case]
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as exc:
        load_sweep(path, experiment)
    assert str(exc.value).startswith(f"{path}: {fragment}"), str(exc.value)
    assert "\n" not in str(exc.value)


def test_well_typed_sweep_values_pass(tmp_path, experiment):
    path = tmp_path / "ok.yaml"
    path.write_text(
        "params:\n  lr_max: {low: 1e-4, high: 2e-3, log: true}\n  epochs: {low: 1, high: 3}\n"
        "  cnn_width: {choices: [8, 16]}\n  dropout: {low: 0, high: 0.5}\n"
        "fixed: {jit_compile: false, augment: {flip: false}}\n"
        "enqueue: [{lr_max: 8e-4, epochs: 2, cnn_width: 16, dropout: 0}]\n"
    )
    sweep = load_sweep(path, experiment)
    assert sweep.params["lr_max"].low == 1e-4  # YAML 1.2 float, not the string "1e-4"
    assert sweep.enqueue[0]["lr_max"] == 8e-4
    # Whole-number bounds of a float setting span the range; of an int setting, the integers.
    assert not sweep.params["dropout"].is_int and sweep.params["epochs"].is_int


def test_float_setting_with_whole_number_bounds_samples_floats(tmp_path, experiment):
    import optuna

    from flower_exp.study.sampling import suggest

    path = tmp_path / "ok.yaml"
    path.write_text("params:\n  epochs: {low: 1, high: 2}\n  lr_max: {low: 1, high: 2}\n")
    sweep = load_sweep(path, experiment)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    drawn = [suggest(study.ask(), sweep.params, {}) for _ in range(5)]
    assert all(isinstance(d["epochs"], int) for d in drawn)
    assert all(isinstance(d["lr_max"], float) for d in drawn) and any(1 < d["lr_max"] < 2 for d in drawn)


# ----------------------------------------------------------------- the YAML loader's guards


def billion_laughs(levels: int = 9) -> str:
    """The classic alias bomb as one choice: each level lists the previous one 9 times."""
    names = "abcdefghi"[:levels]
    items = ['&a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    items += [f"&{name} [" + ",".join([f"*{previous}"] * 9) + "]" for previous, name in zip(names, names[1:])]
    return "params: {cnn_width: {choices: [[" + ", ".join(items) + "]]}}\n"


def test_alias_bomb_in_a_sweep_file_is_refused_fast_without_memory(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(billion_laughs())
    assert len(path.read_bytes()) < 500
    # In a child capped at 1 GiB of address space: without the guard, the error message for the
    # wrong-typed choice renders 387 million aliased strings (MemoryError past 3 GB uncapped).
    code = (
        "import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))\n"
        "from flower_exp.config import ExperimentConfig, load_sweep\nfrom flower_exp.errors import ConfigError\n"
        "try:\n    load_sweep(sys.argv[1], ExperimentConfig())\nexcept ConfigError as exc:\n    print(exc)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert proc.stdout.strip().startswith(f"{path}: line 1: aliases expand to more than 10000 values"), proc.stdout


YAML_GUARD_CASES = {
    "duplicate_top_key": (
        "params: {lr_max: {low: 1, high: 2}}\ntrials: 3\nparams: {}\n",
        "line 3: duplicate key 'params' (first on line 1)",
    ),
    "duplicate_nested_key": (
        "params:\n  epochs: {low: 1, high: 2}\n  epochs: {low: 3, high: 4}\n",
        "line 3: duplicate key 'epochs' (first on line 2)",
    ),
    "cyclic_alias": ("params: &p\n  x: *p\n", "line 2: alias *p refers to a collection that contains it"),
    "python_tag": ("trials: !!python/object/apply:os.system ['echo pwned']\n", "malformed YAML"),
}


@pytest.mark.parametrize("case", sorted(YAML_GUARD_CASES))
def test_yaml_guards(tmp_path, case):
    text, fragment = YAML_GUARD_CASES[case]
    path = tmp_path / "sweep.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as exc:
        load_sweep(path)
    assert str(exc.value).startswith(f"{path}:") and fragment in str(exc.value), str(exc.value)


def test_yaml_merge_keys_may_override_and_small_aliases_pass():
    from flower_exp.yaml_io import load_yaml

    text = "base: &b {flip: true, brightness: 0.1}\nmine:\n  <<: *b\n  flip: false\nlist: [*b, *b]\n"
    assert load_yaml(text, "x.yaml")["mine"] == {"flip": False, "brightness": 0.1}


# ----------------------------------------------------------------- study names, config symlinks


@pytest.mark.parametrize("name", ["tiny-demo", "petals-seed_2", "a.b", "x" * 100, "-dash-first", "_"])
def test_valid_study_names(name):
    from flower_exp.config import check_study_name

    assert check_study_name(name) == name


@pytest.mark.parametrize(
    "name", ["bob's", "../../etc/passwd", "a/b", ".hidden", "", "x" * 101, "two words", "naïve", "a\nb", 'q"uote', "$(id)"]
)
def test_invalid_study_names_are_refused_naming_the_pattern(name):
    from flower_exp.config import check_study_name

    with pytest.raises(ConfigError) as exc:
        check_study_name(name)
    assert str(exc.value) == (
        f"--study {name!r}: not a valid study name; allowed: letters, digits, '.', '_' and '-', "
        "not starting with '.', at most 100 characters"
    )


def test_derived_study_name_is_checked_too(tmp_path):
    from flower_exp.study import SweepOptions, run_sweep

    (tmp_path / "data").mkdir()
    write_config(tmp_path, "experiments:\n  my exp: {data_dir: data, classes: [a, b]}\n")
    with pytest.raises(
        ConfigError,
        match=r"study name of -e my exp -s demo \(choose one with --study\): 'my exp-demo': "
        r"not a valid study name",
    ):
        run_sweep(SweepOptions(config=tmp_path / "experiments.yaml"), log=lambda m: None)
    assert not (tmp_path / "mlruns").exists()


@pytest.mark.parametrize("kind", ["dangling", "loop"])
def test_broken_experiments_yaml_symlink_is_an_error_not_the_packaged_config(cli, tmp_path, kind):
    link = tmp_path / "experiments.yaml"
    if kind == "dangling":
        link.symlink_to(tmp_path / "moved-away.yaml")
    else:
        link.symlink_to(link)
    result = cli("config", "show", cwd=tmp_path)
    assert_one_line_error(result, f"{link}: a symlink to ", "that cannot be followed; fix it, remove it, or pass --config PATH")


# ----------------------------------------------------------------- generated data only where declared


def test_set_data_dir_on_a_generated_experiment_never_generates_there(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the packaged config: demo declares generate for data/demo
    typo = tmp_path / "dta" / "mine"
    with pytest.raises(ConfigError) as exc:
        load_experiment("demo", overrides=[f"data_dir={typo}"])
    assert f"experiments.demo.data_dir: {typo} does not exist (experiment 'demo' reads" in str(exc.value)
    assert not (tmp_path / "dta").exists()

    (tmp_path / "mine").mkdir()
    reused = load_experiment("demo", overrides=[f"data_dir={tmp_path / 'mine'}"])
    assert reused.config.generate is None and reused.data_dir == str(tmp_path / "mine")
    declared = load_experiment("demo", overrides=[f"data_dir={typo}", "generate.classes=3"])
    assert declared.config.generate.classes == 3  # a recipe set in the same command declares it there
    assert load_experiment("demo", overrides=["image_size=32"]).config.generate is not None


@pytest.mark.parametrize("command", [["config", "show"], ["train"]])
def test_missing_data_dir_set_on_the_command_line_exits_2_naming_it(cli, tmp_path, command):
    missing = tmp_path / "nonexistent"
    result = cli(*command, "--set", f"data_dir={missing}", cwd=tmp_path)
    assert_one_line_error(result, f"experiments.demo.data_dir: {missing} does not exist", "import-folder")
    assert not missing.exists() and not (tmp_path / "data").exists()


# ----------------------------------------------------------------- writing experiments.yaml

SETTINGS = {
    "description": "photos",
    "data_dir": "data/mine",
    "image_size": 96,
    "batch_size_per_replica": 32,
    "shuffle_buffer": 25,
}
COMMENTED = """# my project
default: mine   # the one I use
experiments:
  # my first experiment
  mine:
    data_dir: data
    classes: [a, b, c]   # three

  # the remote one
  remote:
    classes_file: builtin:petals
# after the experiments
"""


def test_add_experiment_keeps_every_line_and_comment(tmp_path):
    from flower_exp.config import add_experiment, load_file

    path = write_config(tmp_path, COMMENTED)
    add_experiment(path, "photos", SETTINGS, "flower-exp data import-folder from /x/my\nphotos")
    text = path.read_text()
    lines = text.splitlines()
    kept = iter(lines)
    assert all(line in kept for line in COMMENTED.splitlines()), text  # every old line, in order
    marker = next(i for i, line in enumerate(lines) if line.startswith("  # photos: written by "))
    assert "flower-exp data import-folder from /x/my photos on " in lines[marker]
    assert lines[marker + 1] == "  photos:" and lines[-1] == "# after the experiments"
    _, parsed = load_file(path)
    assert list(parsed.experiments) == ["mine", "remote", "photos"]
    assert parsed.experiments["photos"].model_dump(include=set(SETTINGS)) == SETTINGS
    assert [p.name for p in tmp_path.iterdir()] == ["experiments.yaml"]  # no temp file left behind


def test_add_experiment_refuses_a_taken_name_unless_force_and_replaces_only_that_block(tmp_path):
    from flower_exp.config import add_experiment, load_file

    path = write_config(tmp_path, COMMENTED)
    with pytest.raises(ConfigError, match=r"experiments\.mine: already exists; choose another --experiment name or add --force"):
        add_experiment(path, "mine", SETTINGS, "test")
    assert path.read_text() == COMMENTED
    add_experiment(path, "photos", SETTINGS, "test")
    add_experiment(path, "photos", {**SETTINGS, "image_size": 64}, "test again", force=True)
    add_experiment(path, "mine", SETTINGS, "test", force=True)
    text = path.read_text()
    assert text.count("\n  photos:\n") == 1 and text.count("# photos: written by") == 1 and "test again" in text
    assert "# the remote one" in text and "# my first experiment" in text and "three" not in text
    _, parsed = load_file(path)
    assert parsed.experiments["photos"].image_size == 64 and parsed.experiments["mine"].data_dir == "data/mine"
    assert list(parsed.experiments) == ["mine", "remote", "photos"]


def test_new_experiments_yaml_starts_from_the_packaged_one(tmp_path, monkeypatch):
    from flower_exp.config import add_experiment, load_file, writable_config

    monkeypatch.chdir(tmp_path)
    path = writable_config(None)
    assert path == tmp_path / "experiments.yaml" and not path.exists()
    add_experiment(path, "photos", SETTINGS, "test")
    _, parsed = load_file(path)
    assert list(parsed.experiments) == ["demo", "petals", "photos"] and parsed.default == "demo"


def test_packaged_or_flow_style_experiments_yaml_is_not_edited(tmp_path):
    from flower_exp.config import add_experiment, check_new_experiment, writable_config

    packaged = REPO / "flower_exp" / "resources" / "experiments.yaml"
    with pytest.raises(ConfigError, match="the packaged experiments.yaml is never edited"):
        writable_config(packaged)
    flow = write_config(tmp_path, "experiments: {a: {data_dir: .}}\n")
    with pytest.raises(ConfigError, match=r"experiments: written in flow style"):
        add_experiment(flow, "b", SETTINGS, "test")
    assert flow.read_text() == "experiments: {a: {data_dir: .}}\n"
    for name in ("my photos", "-x", "a.b", "", "x" * 61, "naïve"):
        with pytest.raises(ConfigError, match="not a valid experiment name"):
            check_new_experiment(flow, name)


# ----------------------------------------------------------------- sweep --set


def test_sweep_overrides_are_typed_fixed_settings_and_never_a_searched_key(project):
    from flower_exp.config import ParamSpec, sweep_overrides

    overrides = ["epochs=2", "augment.flip=false", "lr_max=1e-3", f"data_dir={project / 'data'}"]
    exp = load_experiment(config=project / "experiments.yaml", overrides=overrides)
    params = {"dropout": ParamSpec(low=0.0, high=0.5)}
    assert sweep_overrides(exp.config, overrides, params, "s.yaml") == {"epochs": 2, "augment.flip": False, "lr_max": 1e-3}
    with pytest.raises(ConfigError) as exc:
        sweep_overrides(exp.config, ["dropout=0.1"], params, "s.yaml")
    assert str(exc.value).startswith("--set dropout: s.yaml: params.dropout searches it; drop --set dropout")
    with pytest.raises(ConfigError, match=r"--set augment: s.yaml: params.augment.flip searches it"):
        sweep_overrides(exp.config, ["augment={flip: true}"], {"augment.flip": ParamSpec(choices=[True, False])}, "s.yaml")


def test_load_sweep_applies_fixed_over_the_files_fixed(tmp_path, project):
    sweep = tmp_path / "s.yaml"
    sweep.write_text("params: {dropout: {low: 0.0, high: 0.5}}\nfixed: {epochs: 15, cnn_depth: 3}\n")
    exp = load_experiment(config=project / "experiments.yaml")
    loaded = load_sweep(sweep, exp.config, fixed={"epochs": 2})
    assert loaded.fixed == {"epochs": 2, "cnn_depth": 3}
