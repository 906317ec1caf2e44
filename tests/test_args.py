"""``CalibrationArguments``: the JSON-string forms of ``loss_kwargs`` and ``posthoc_kwargs``."""

from __future__ import annotations

import pytest

from nlpcal.args import CalibrationArguments


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
