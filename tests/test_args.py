"""``CalibrationArguments``: JSON-string kwargs, post-hoc lists, configs through the parser."""

from __future__ import annotations

import pytest

from nlpcal.args import CalibrationArguments, PosthocVariant, parse_config, posthoc_variants


@pytest.mark.parametrize("name", ["loss_kwargs", "posthoc_kwargs"])
def test_a_json_object_string_is_parsed(name, tmp_path):
    args = CalibrationArguments(output_dir=str(tmp_path), report_to="none", **{name: '{"a": 1}'})
    assert getattr(args, name) == {"a": 1}


@pytest.mark.parametrize("name", ["loss_kwargs", "posthoc_kwargs"])
def test_invalid_json_names_the_argument_and_the_value(name, tmp_path):
    with pytest.raises(
        ValueError,
        match=rf"^{name} must be a dict or a JSON object string, got "
        r"'\{bad json': invalid JSON",
    ):
        CalibrationArguments(output_dir=str(tmp_path), report_to="none", **{name: "{bad json"})


@pytest.mark.parametrize(
    ("config", "overrides", "expected"),
    [
        ({"posthoc": "temperature"}, (), ["temperature"]),
        ({}, ("--posthoc", "temperature", "t2=temperature"), ["temperature", "t2=temperature"]),
        ({"posthoc": ["none"]}, (), []),
        ({"posthoc": "None"}, (), []),
        ({}, (), ["auto"]),
    ],
    ids=["yaml-string", "command-line-list", "none", "none-any-case", "default"],
)
def test_posthoc_takes_one_name_or_a_list(config, overrides, expected):
    (args,) = parse_config(
        {"output_dir": "out", "report_to": "none", **config}, overrides=overrides
    )
    assert args.posthoc == expected


def test_posthoc_in_code_takes_one_name():
    assert CalibrationArguments("out", report_to="none", posthoc="vector").posthoc == ["vector"]


def test_posthoc_kwargs_are_flat_for_one_variant_and_by_variant_for_several():
    one = posthoc_variants(["vector"], {"max_iter": 5}, auto="temperature")
    assert one == {"vector": PosthocVariant("vector", {"max_iter": 5})}
    several = posthoc_variants(
        ["auto", "vector", "long=temperature"], {"long": {"max_iter": 500}}, auto="exponential"
    )
    assert several == {
        "exponential": PosthocVariant("exponential", {}),
        "vector": PosthocVariant("vector", {}),
        "long": PosthocVariant("temperature", {"max_iter": 500}),
    }
    with pytest.raises(ValueError, match=r"posthoc_kwargs\['long'\] must be a dict"):
        posthoc_variants(["vector", "long=temperature"], {"long": 5}, auto="temperature")


@pytest.mark.parametrize(("overrides", "expected"), [((), []), (("--ood_sets", "imdb"), ["imdb"])])
def test_an_empty_list_in_a_config_empties_the_field(overrides, expected):
    (args,) = parse_config(
        {"ood_sets": [], "output_dir": "out", "report_to": "none"}, overrides=overrides
    )
    assert args.ood_sets == expected


def test_an_empty_list_for_a_single_value_is_rejected():
    with pytest.raises(ValueError, match=r"--calibration_loss.*expected one argument"):
        parse_config({"calibration_loss": [], "output_dir": "out"})
