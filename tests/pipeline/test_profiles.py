from pathlib import Path

import pytest

from stages.common.errors import ProfileError
from pipeline.profiles import load_profile

REPO = Path(__file__).resolve().parents[2]


def _write(tmp_path, text, name="p.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("profile", sorted((REPO / "profiles").rglob("*.yaml")), ids=lambda p: p.name)
def test_shipped_profiles_validate(profile):
    assert load_profile(profile).name


def test_defaults_and_name_from_file(tmp_path):
    profile = load_profile(_write(tmp_path, "seed: 3\n", "mine.yaml"))
    assert profile.name == "mine" and profile.seed == 3 and profile.teacher.p_last == 0.5


def test_extends_merges_sections(tmp_path):
    _write(tmp_path, "teacher:\n  arch: resnet32\n  p_last: 0.7\nstudent:\n  arch: resnet14\n", "base.yaml")
    child = _write(tmp_path, "extends: base.yaml\nteacher:\n  p_last: 0.9\n", "child.yaml")
    profile = load_profile(child)
    assert profile.teacher.arch == "resnet32" and profile.teacher.p_last == 0.9
    assert profile.student.arch == "resnet14"


def test_set_overrides_parse_yaml_values(tmp_path):
    path = _write(tmp_path, "distill:\n  temperature: 4\n")
    profile = load_profile(path, ["distill.temperature=2", "benchmark.batch_sizes=[8, 1]",
                                  "distill.p_last=null"])
    assert profile.distill.temperature == 2 and profile.benchmark.batch_sizes == (1, 8)


@pytest.mark.parametrize("text, overrides, message", [
    ("teacher:\n  p_lst: 0.5\n", [], "unknown key 'teacher.p_lst' \\(did you mean 'p_last'\\?\\); allowed here: arch, p_last"),
    ("teacher:\n  p_last: 1.5\n", [], "teacher.p_last = 1.5: Input should be less than or equal to 1"),
    ("teacher:\n  p_last: 0\n", [], "teacher.p_last = 0: Input should be greater than 0"),
    ("student:\n  arch: resnet21\n", [], "student.arch = 'resnet21': unknown network 'resnet21'; allowed: resnet8"),
    ("teacher:\n  training:\n    epochs: many\n", [], "teacher.training.epochs = 'many': Input should be a valid integer"),
    ("distill:\n  drop_mode: layer\n", [], "distill.drop_mode = 'layer': Input should be 'batch' or 'sample'"),
    ("seed: 1\n", ["distill.temprature=2"], "\\(with --set\\): unknown key 'distill.temprature' \\(did you mean 'temperature'\\?\\)"),
    ("data:\n  dataset: npz\n", [], "dataset 'npz' needs data.root pointing at an .npz file"),
    ("teacher: [1, 2\n", [], "YAML syntax error at line 2, column 1"),
    ("- a\n- b\n", [], "a profile must be a mapping"),
    ("seed: 1\n", ["novalue"], "expected key.path=value"),
    ("teacher:\n  arch: vgg13\n  p_last: 0.5\n  skips: false\n", [], "vgg13 needs identity skips for stochastic blocks"),
    ("student:\n  arch: resnet8\n  skips: false\n", [], "resnet8 is a residual network"),
    ("teacher:\n  arch: vgg13\n  p_last: 1\ndistill:\n  p_last: 0.5\n", [], "teacher vgg13 has no identity skips"),
    ("teacher:\n  readings: [plain, sd]\n", [], "teacher.readings.1 = 'sd': Input should be 'stochastic_depth' or 'plain'"),
    ("teacher:\n  readings: [plain, plain]\n", [], "each reading at most once"),
    ("teacher:\n  p_last: 1\n  readings: [plain]\n", [], "the teaching p_n is 1 \\(distill.p_last, or else teacher.p_last\\)"),
    ("distill:\n  kept_scale: both\n", [], "distill.kept_scale = 'both': Input should be 'trained' or 'expectation'"),
    ("data:\n  validation_images: 0\n", [], "data.validation_images = 0: Input should be greater than or equal to 1"),
    ("mutual:\n  update: alternating\n", [], "mutual.update = 'alternating': Input should be 'simultaneous' or 'sequential'"),
    ("teacher:\n  arch: resnet20\nstudent:\n  arch: vgg13\ndistill:\n  transfer: at\n", [],
     "teacher resnet20 has 3 groups and student vgg13 5"),
    ("teacher:\n  training:\n    epochs: 50\n    lr_milestones: [30, 60, 90]\n", [],
     "section teacher.training: training.lr_milestones \\[30, 60, 90\\]: training ends after epoch 50 "
     "\\(training.epochs\\), so 60, 90 would never decay the LR; scale the milestones with the epochs, or set "
     "lr_milestones to \\[\\] for a constant LR$"),
    ("student:\n  training:\n    lr_milestones: [0, 10]\n", [],
     "section student.training: training.lr_milestones \\[0, 10\\]: milestones are epochs, counted from 1$"),
    ("seed: 1\n", ["teacher.training.epochs=2", "teacher.training.warmup_epochs=2"],
     "section teacher.training: training.warmup_epochs 2 is not shorter than training.epochs 2, so the LR would "
     "never reach training.lr; shorten the warm-up, or set warmup_epochs to null$"),
    ("data:\n  image_size: 64\n", [], "section data: data.image_size = 64 resizes images read from image files "
     "\\(tiny_imagenet and folder datasets\\), but dataset 'digits' holds arrays, which keep their size"),
    ("data:\n  dataset: folder\n  root: packed.npz\n  image_size: 64\n", [], "but an .npz holds arrays"),
    ("target:\n  budgets:\n    latency_ms: {0: 2.0}\n", [],
     "target.budgets.latency_ms has the key 0: Input should be greater than 0$"),
    ("seed: 1\n", ["target.budgets.latency_ms={1: -2}"],
     "\\(with --set\\): target.budgets.latency_ms.1 = -2: Input should be greater than 0$"),
])
def test_bad_profiles_get_one_line_naming_file_key_and_value(tmp_path, text, overrides, message):
    path = _write(tmp_path, text)
    with pytest.raises(ProfileError, match=message) as info:
        load_profile(path, overrides)
    assert str(path) in str(info.value) or "--set" in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_profile_and_missing_parent(tmp_path):
    with pytest.raises(ProfileError, match="profile not found"):
        load_profile(tmp_path / "absent.yaml")
    child = _write(tmp_path, "extends: gone.yaml\n")
    with pytest.raises(ProfileError, match="'extends' names 'gone.yaml'"):
        load_profile(child)


def test_extends_cycle_is_reported(tmp_path):
    _write(tmp_path, "extends: b.yaml\n", "a.yaml")
    _write(tmp_path, "extends: a.yaml\n", "b.yaml")
    with pytest.raises(ProfileError, match="cycle"):
        load_profile(tmp_path / "a.yaml")


def test_profiles_are_frozen(tmp_path):
    profile = load_profile(_write(tmp_path, "seed: 1\n"))
    with pytest.raises(Exception):
        profile.seed = 2


def test_a_binary_file_passed_as_a_profile_is_one_line(tmp_path):
    path = tmp_path / "model.yaml"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    with pytest.raises(ProfileError) as info:
        load_profile(path, [])
    assert str(info.value) == f"{path}: not a text file (byte 0 is not UTF-8); pass a .yaml profile"


def test_a_shortened_step_recipe_is_valid_with_its_milestones_scaled_and_a_cosine_one_ignores_them(tmp_path):
    path = _write(tmp_path, "teacher:\n  training:\n    epochs: 50\n    lr_milestones: [60, 120, 180]\n"
                            "    lr_schedule: cosine\n")
    assert load_profile(path).teacher.training.lr_milestones == (60, 120, 180)  # unused by cosine
    scaled = load_profile(path, ["teacher.training.lr_schedule=step", "teacher.training.lr_milestones=[15,30,45]"])
    assert scaled.teacher.training.lr_milestones == (15, 30, 45)
