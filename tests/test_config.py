"""Config values are parsed and checked against the dataclass field types:
one path for --set strings, get_preset(**overrides), replace(), from_dict() and construction."""
import dataclasses
import json

import pytest

from destseg_lib.cli import _config, build_parser, main
from destseg_lib.config import PRESETS, DeSTSegConfig, get_preset
from destseg_lib.errors import ConfigError, DestSegError

TRUE = ["true", "True", "TRUE", "yes", "Yes", "1", "on"]
FALSE = ["false", "False", "FALSE", "no", "NO", "0", "off"]


@pytest.mark.parametrize("text", TRUE + FALSE)
def test_bool_strings_are_parsed_not_truthy(text):
    want = text in TRUE
    cfg = get_preset("ci", amp=text, cache_images=text, grayscale_textures=text)
    assert cfg.cache_images is want and cfg.grayscale_textures is want
    assert cfg.amp == ("cuda" if want else "off")  # amp was a bool: true/false keep their old meaning


def test_set_false_from_the_command_line_is_false():
    args = build_parser().parse_args(["demo", "--preset", "ci", "--set", "amp=false", "--set",
                                      "grayscale_textures=no", "--set", "texture_dir=none",
                                      "--set", "lr_student=1e-3", "--set", "seg_steps=7"])
    cfg = _config(args)
    assert cfg.amp == "off" and cfg.grayscale_textures is False and cfg.texture_dir is None
    assert cfg.lr_student == pytest.approx(1e-3) and type(cfg.lr_student) is float
    assert cfg.seg_steps == 7 and type(cfg.seg_steps) is int


@pytest.mark.parametrize("field, value", [
    ("image_size", "abc"), ("lr_student", "abc"), ("student_steps", 2.5), ("student_steps", "2.5"),
    ("seed", "abc"), ("amp", "maybe"), ("amp", 2), ("grayscale_textures", "perhaps"), ("image_size", True),
    ("lr_student", float("nan")), ("lr_student", "inf"), ("teacher", 5), ("batch_size", [4]),
])
def test_wrong_types_name_the_field_and_the_value(field, value):
    with pytest.raises(ConfigError) as e:
        get_preset("ci", **{field: value})
    msg = str(e.value)
    assert field in msg and repr(value) in msg and "expected" in msg
    assert isinstance(e.value, ValueError) and isinstance(e.value, DestSegError)
    with pytest.raises(ConfigError, match=field):  # the same check when constructing directly
        DeSTSegConfig(**{field: value})


def test_range_errors_are_config_errors_too():
    with pytest.raises(ConfigError, match="image_size=100"):
        get_preset("ci", image_size=100)
    with pytest.raises(ConfigError, match=r"did you mean 'lr_student'"):
        get_preset("ci", lr_studnet=0.1)


def test_numbers_are_numbers():
    cfg = get_preset("ci", student_steps="1e3", seg_steps=4.0, lr_seg_res=1, beta_max="0.5")
    assert (cfg.student_steps, cfg.seg_steps) == (1000, 4)
    assert all(type(v) is int for v in (cfg.student_steps, cfg.seg_steps))
    assert type(cfg.lr_seg_res) is float and cfg.lr_seg_res == 1.0 and cfg.beta_max == 0.5


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_field_round_trips_through_its_text(preset):
    """Generic over whatever fields exist: each preset, written as --set strings, parses back to itself."""
    ref = PRESETS[preset]
    text = {k: ("none" if v is None else str(v)) for k, v in ref.to_dict().items()}
    assert DeSTSegConfig(**text) == ref
    for f in dataclasses.fields(DeSTSegConfig):  # and the parsed types are the declared ones
        v = getattr(DeSTSegConfig(**text), f.name)
        assert v is None or type(v) is type(getattr(ref, f.name)), f.name


def test_assigned_values_are_checked_by_validate():
    cfg = get_preset("ci")
    cfg.amp = "false"
    assert cfg.validate().amp == "off"
    cfg.seed = "abc"
    with pytest.raises(ConfigError, match="seed='abc'"):
        cfg.validate()


def test_from_dict_parses_and_checks_saved_configs():
    d = get_preset("ci").to_dict()
    assert DeSTSegConfig.from_dict({**d, "amp": "no"}).amp == "off"
    with pytest.raises(ConfigError, match="image_size='abc'"):
        DeSTSegConfig.from_dict({**d, "image_size": "abc"})


@pytest.mark.parametrize("pair, field", [("image_size=abc", "image_size"), ("lr_student=abc", "lr_student"),
                                         ("student_steps=2.5", "student_steps"), ("seed=abc", "seed"),
                                         ("amp=maybe", "amp"), ("nonsense", "KEY=VALUE")])
def test_cli_bad_set_is_one_line_exit_2(tmp_path, capsys, pair, field):
    code = main(["train", "--preset", "ci", "--set", pair, "--out", str(tmp_path / "o"),
                 "--data-root", str(tmp_path / "toy"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and field in err and err.startswith("destseg: error:") and err.count("\n") == 1
    # the error comes before any data is made or read and before any training
    assert "Traceback" not in err and not (tmp_path / "o").exists() and not (tmp_path / "toy").exists()


def test_cli_debug_shows_the_traceback(tmp_path):
    with pytest.raises(ConfigError):
        main(["--debug", "train", "--preset", "ci", "--set", "seed=abc", "--out", str(tmp_path / "o")])
    with pytest.raises(ConfigError):
        main(["train", "--preset", "ci", "--set", "seed=abc", "--out", str(tmp_path / "o"), "--debug"])


def test_saved_records_carry_their_format_and_old_ones_read_as_trained(tmp_path):
    """The kit saves ``config_format``; a record without it (format 1) fills each fidelity field it
    lacks with the value it was trained with; a newer format is refused; a user's partial file of
    fields keeps the defaults for the rest (it is no old record)."""
    from destseg_lib.config import CONFIG_FORMAT, MISSING_FIELD_VALUES
    from destseg_lib.errors import ConfigError

    cfg = get_preset("quick", seed=3)
    record = cfg.to_record()
    assert record["config_format"] == CONFIG_FORMAT and DeSTSegConfig.from_dict(record) == cfg
    paper = DeSTSegConfig()
    fields = {k: v for k, v in paper.to_dict().items() if k not in MISSING_FIELD_VALUES}
    old = DeSTSegConfig.from_dict(fields)  # format 1, before the fidelity fields existed
    assert {k: getattr(old, k) for k in MISSING_FIELD_VALUES} == MISSING_FIELD_VALUES
    partly = DeSTSegConfig.from_dict({**fields, "aspp": "official"})  # format 1 with one of them
    assert partly.aspp == "official" and partly.init == MISSING_FIELD_VALUES["init"]
    # format 2: what it says (here every field); no field is filled in
    assert DeSTSegConfig.from_dict(paper.to_record()) == paper
    with pytest.raises(ConfigError, match="config_format 99"):
        DeSTSegConfig.from_dict({**record, "config_format": 99})
    user = tmp_path / "mine.json"
    user.write_text(json.dumps({"seed": 5}))
    mine = DeSTSegConfig.from_file(user)
    assert mine == paper.replace(seed=5) and mine.aspp != MISSING_FIELD_VALUES["aspp"]
    saved = tmp_path / "config.json"
    saved.write_text(json.dumps(cfg.to_record()))
    assert DeSTSegConfig.from_file(saved) == cfg
