"""nextflow_schema.json: validates the test profile's params and covers every param."""

from __future__ import annotations

import json
import re

import pytest
from nf_lint import REPO, config_params, pipeline_files

jsonschema = pytest.importorskip("jsonschema", reason="jsonschema not installed (test extra)")

SCHEMA = json.loads((REPO / "nextflow_schema.json").read_text())
INPUT_SCHEMA = json.loads((REPO / "assets" / "schema_input.json").read_text())


def schema_properties() -> dict:
    props = {}
    for group in SCHEMA["$defs"].values():
        props.update(group["properties"])
    return props


def validate(params: dict) -> list[str]:
    # nf-schema ignores params left null; the $defs groups are checked through allOf
    present = {k: v for k, v in params.items() if v is not None and v is not Ellipsis}
    validator = jsonschema.Draft202012Validator(SCHEMA)
    return [e.message for e in validator.iter_errors(present)]


@pytest.fixture(scope="module")
def defaults():
    return config_params(REPO / "nextflow.config")


@pytest.fixture(scope="module")
def test_profile(defaults):
    return {**defaults, **config_params(REPO / "conf" / "test.config")}


def test_schema_is_a_valid_draft_2020_12_schema():
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    jsonschema.Draft202012Validator.check_schema(INPUT_SCHEMA)
    refs = {ref["$ref"].split("/")[-1] for ref in SCHEMA["allOf"]}
    assert refs == set(SCHEMA["$defs"])


def test_test_profile_params_validate(test_profile):
    assert validate(test_profile) == []
    assert test_profile["demo_models"] is True
    assert test_profile["input"].endswith("/examples/example.fa")


def test_defaults_need_input(defaults):
    errors = validate(defaults)
    assert errors == ["'input' is a required property"]


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"chunk_size": 400}, "is not one of [300, 500]"),
        ({"shard_size": 0}, "less than the minimum of 1"),
        ({"input": "reads.bam"}, "does not match"),
        ({"publish_features": "yes"}, "is not of type 'boolean'"),
        ({"esm_batch_size": 0}, "less than the minimum of 1"),
        ({"precision": "fp4"}, "is not one of ['auto', 'fp32', 'bf16', 'fp16', 'fp8']"),
        ({"compile": "yes"}, "is not of type 'boolean'"),
    ],
)
def test_bad_params_are_rejected(test_profile, change, fragment):
    errors = validate({**test_profile, **change})
    assert any(fragment in e for e in errors), errors


def test_every_param_used_in_the_code_is_in_the_schema(defaults):
    used = set()
    for path in pipeline_files(".nf") + pipeline_files(".config"):
        used |= set(re.findall(r"\bparams\.(\w+)", (REPO / path).read_text()))
        used |= set(config_params(REPO / path))
    props = schema_properties()
    assert used - set(props) == set(), "params used but not in nextflow_schema.json"
    # and every schema param has a default in nextflow.config
    assert set(props) - set(defaults) == set(), "schema params without a nextflow.config default"
    assert {"input", "outdir", "shard_size", "models", "model_cache", "publish_features",
            "precision", "compile"} <= used  # fmt: skip


def test_precision_param_takes_what_the_cli_takes(defaults):
    """Every --precision of the embed stages, fp8 included, and nothing else."""
    from virnucpro.device import PRECISIONS

    assert schema_properties()["precision"]["enum"] == list(PRECISIONS)
    assert defaults["precision"] == "auto" and defaults["compile"] is False


def test_schema_defaults_match_config_defaults(defaults):
    for name, prop in schema_properties().items():
        if "default" in prop:
            assert defaults[name] == prop["default"], name
        else:
            # no schema default: the config's is null or computed at launch
            value = defaults[name]
            assert value is None or value is Ellipsis or "LAUNCH" in value, name


def test_samplesheet_schema():
    validator = jsonschema.Draft202012Validator(INPUT_SCHEMA)
    good = [
        {"sample": "gut_1", "fasta": "data/gut_1.fa.gz"},
        {"sample": "soil.2", "fasta": "/abs/soil.fasta"},
    ]
    assert list(validator.iter_errors(good)) == []
    bad = [
        [{"sample": "gut 1", "fasta": "a.fa"}],
        [{"sample": "a", "fasta": "a.fastq"}],
        [{"sample": "a"}],
        [{"fasta": "a.fa"}],
    ]
    for sheet in bad:
        assert list(validator.iter_errors(sheet)), sheet
    assert INPUT_SCHEMA["items"]["properties"]["sample"]["meta"] == ["id"]
    assert INPUT_SCHEMA["uniqueEntries"] == ["sample"]
