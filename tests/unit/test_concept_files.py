"""Unit tests for concept dictionaries (JSON/CSV) and concept configs (per-latent scale and bias)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from mi_crow.mechanistic.concepts import Concept, ConceptConfig, ConceptDictionary, ConceptValidationError

pytestmark = pytest.mark.unit

N = 10  # latents of the SAE every test dictionary belongs to


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# ---------------------------------------------------------------------- dictionary: loading


def test_json_object_form(tmp_path: Path) -> None:
    d = ConceptDictionary.load(write(tmp_path / "c.json", json.dumps({"0": "cats", "9": "dogs"})), N)
    assert len(d) == 2 and d.n_latents == N
    assert d.name(0) == "cats" and d.name(9) == "dogs" and d.name(5) is None
    assert d.entries[0] == Concept("cats", "", None)


def test_json_object_with_dicts_form(tmp_path: Path) -> None:
    data = {
        "n_latents": N,
        "concepts": {
            "3": {"name": "french", "description": "French text", "score": 0.91},
            "4": {"name": "code"},
        },
    }
    d = ConceptDictionary.load(write(tmp_path / "c.json", json.dumps(data)), N)
    assert d.entries[3] == Concept("french", "French text", 0.91)
    assert d.entries[4] == Concept("code", "", None)


def test_json_list_form() -> None:
    text = json.dumps([{"latent": 1, "name": "a", "score": 1}, {"latent": "2", "name": "b", "description": "x"}])
    d = ConceptDictionary.from_json(text, N)
    assert d.entries == {1: Concept("a", "", 1.0), 2: Concept("b", "x", None)}
    assert isinstance(d.entries[1].score, float)


@pytest.mark.parametrize(
    ("header", "row"),
    [
        ("latent,name", "7,negation"),
        ("neuron_idx,name", "7,negation"),
        ("index,concept_name", "7,negation"),
        (" Latent , Concept ", "7,negation"),  # headers are matched case- and space-insensitively
    ],
)
def test_csv_latent_column_variants(tmp_path: Path, header: str, row: str) -> None:
    d = ConceptDictionary.load(write(tmp_path / "c.CSV", f"{header}\n{row}\n"), N)
    assert d.entries == {7: Concept("negation", "", None)}


def test_csv_with_description_and_score(tmp_path: Path) -> None:
    text = "latent,name,description,score\n0,a,first,0.5\n1,b,,\n 2 ,c,third,-1e-3\n"
    d = ConceptDictionary.load(write(tmp_path / "c.csv", text), N)
    assert d.entries == {
        0: Concept("a", "first", 0.5),
        1: Concept("b", "", None),  # empty score cell means no score
        2: Concept("c", "third", -0.001),
    }


def test_csv_with_short_row_reports_missing_name() -> None:
    with pytest.raises(ConceptValidationError, match="latent 1 has no name"):
        ConceptDictionary.from_csv("latent,name\n0,a\n1\n", N)


def test_csv_missing_columns() -> None:
    with pytest.raises(ConceptValidationError, match=r"needs a 'latent' \(or neuron_idx\) and a 'name' column"):
        ConceptDictionary.from_csv("id,label\n0,a\n", N, source="mine.csv")
    with pytest.raises(ConceptValidationError, match="it has None"):
        ConceptDictionary.from_csv("", N)


def test_csv_with_byte_order_mark(tmp_path: Path) -> None:
    path = tmp_path / "excel.csv"
    path.write_bytes("latent,name\n0,a\n".encode("utf-8-sig"))
    assert ConceptDictionary.load(path, N).name(0) == "a"


def test_invalid_json(tmp_path: Path) -> None:
    path = write(tmp_path / "bad.json", "{not json")
    with pytest.raises(ConceptValidationError, match=r"bad\.json: not valid JSON"):
        ConceptDictionary.load(path, N)


@pytest.mark.parametrize("text", ['"just a string"', "42", "null"])
def test_json_of_the_wrong_shape(text: str) -> None:
    with pytest.raises(ConceptValidationError, match="expected an object latent -> name, or a list of objects"):
        ConceptDictionary.from_json(text, N)


def test_json_list_with_non_object_entry() -> None:
    with pytest.raises(ConceptValidationError, match="list entries must be objects"):
        ConceptDictionary.from_json('[{"latent": 0, "name": "a"}, "b"]', N)


# ---------------------------------------------------------------------- dictionary: validation


def test_every_problem_is_reported_in_one_error() -> None:
    rows = [
        {"latent": 0, "name": "ok"},
        {"latent": 10, "name": "too high"},
        {"latent": -1, "name": "negative"},
        {"latent": "x", "name": "not a number"},
        {"latent": 1.5, "name": "fraction"},
        {"latent": None, "name": "missing"},
        {"latent": 2, "name": "first"},
        {"latent": 2, "name": "again"},
        {"latent": 3, "name": ""},
        {"latent": 4, "name": "   "},
        {"latent": 5},
        {"latent": 6, "name": "nan", "score": "nan"},
        {"latent": 7, "name": "inf", "score": math.inf},
        {"latent": 8, "name": "word", "score": "high"},
        {"latent": 9, "name": "good", "score": 0.5},
    ]
    with pytest.raises(ConceptValidationError) as err:
        ConceptDictionary.from_json(json.dumps(rows), N, source="dict.json")
    msg = str(err.value)
    assert msg.startswith(f"dict.json: 12 bad entries for an SAE with {N} latents: ")
    for fragment in [
        f"latent 10 out of range 0..{N - 1}",
        "latent -1 out of range",
        "latent 'x' is not an integer",
        "latent 1.5 is not an integer",
        "latent None is not an integer",
        "latent 2 appears twice",
        "latent 3 has no name",
        "latent 4 has no name",
        "latent 5 has no name",
        "latent 6 has a non-numeric or non-finite score 'nan'",
        "latent 7 has a non-numeric or non-finite score inf",
        "latent 8 has a non-numeric or non-finite score 'high'",
    ]:
        assert fragment in msg, fragment
    assert "latent 0" not in msg and "latent 9" not in msg  # good entries are not blamed


def test_csv_problems_are_reported_together() -> None:
    text = "latent,name,score\n0,a,1\n0,b,2\n12,c,\n1.0,d,\n2,,\n3,e,inf\n"
    with pytest.raises(ConceptValidationError) as err:
        ConceptDictionary.from_csv(text, N)
    msg = str(err.value)
    assert msg.startswith("concepts.csv: 5 bad entries")
    for fragment in [
        "latent 0 appears twice",
        "latent 12 out of range",
        "latent '1.0' is not an integer",
        "latent 2 has no name",
        "latent 3 has a non-numeric or non-finite score 'inf'",
    ]:
        assert fragment in msg, fragment


def test_more_than_twenty_problems_are_summarised() -> None:
    table = {str(N + i): f"c{i}" for i in range(25)}
    with pytest.raises(ConceptValidationError) as err:
        ConceptDictionary.from_json(json.dumps(table), N)
    msg = str(err.value)
    assert "25 bad entries" in msg and "… and 5 more" in msg
    assert f"latent {N + 19} out of range" in msg and f"latent {N + 20} out of range" not in msg


@pytest.mark.parametrize("latent", [True, "01", "+1", " 1e0"])
def test_non_canonical_integers_are_rejected(latent: Any) -> None:
    with pytest.raises(ConceptValidationError, match="is not an integer"):
        ConceptDictionary.from_json(json.dumps([{"latent": latent, "name": "a"}]), N)


def test_duplicate_keys_in_json_object_form_are_reported() -> None:
    with pytest.raises(ConceptValidationError, match="latent 1 appears twice"):
        ConceptDictionary.from_json('{"1": "first", "1": "second"}', N)


def test_error_is_a_value_error() -> None:
    assert issubclass(ConceptValidationError, ValueError)


# ---------------------------------------------------------------------- dictionary: editing and saving


def test_set_name_find_and_validation() -> None:
    d = ConceptDictionary(N, {1: Concept("x")})
    d.set(2, "y")
    d.set("3", Concept("x", "again", 0.2))  # type: ignore[arg-type]
    assert d.name(2) == "y" and d.name("3") == "x"  # type: ignore[arg-type]
    assert sorted(d.find("x")) == [1, 3] and d.find("nope") == []
    d.set(2, "renamed")  # set replaces an entry, it is not a duplicate
    assert d.name(2) == "renamed" and len(d) == 3
    with pytest.raises(ConceptValidationError, match="out of range"):
        d.set(N, "z")
    with pytest.raises(ConceptValidationError, match="has no name"):
        d.set(0, " ")
    with pytest.raises(ConceptValidationError, match="non-finite score"):
        d.set(0, Concept("a", score=math.nan))
    with pytest.raises(ConceptValidationError, match="out of range"):
        ConceptDictionary(2, {5: Concept("x")})
    assert len(d) == 3


@pytest.mark.parametrize("suffix", [".json", ".csv"])
def test_save_load_round_trip(tmp_path: Path, suffix: str) -> None:
    d = ConceptDictionary(N, {9: Concept("nine", "the last", 0.75), 0: Concept("zero")})
    path = d.save(tmp_path / "sub" / "dictionary.json")
    assert path == tmp_path / "sub" / "dictionary.json"
    data = json.loads(path.read_text())
    assert data == {
        "n_latents": N,
        "concepts": {
            "0": {"name": "zero", "description": "", "score": None},
            "9": {"name": "nine", "description": "the last", "score": 0.75},
        },
    }
    assert list(data["concepts"]) == ["0", "9"]
    back = ConceptDictionary.load(path, N)
    assert back.entries == d.entries
    if suffix == ".csv":
        # The same entries written as CSV read back to the same dictionary.
        lines = ["latent,name,description,score"] + [
            f"{i},{c.name},{c.description},{'' if c.score is None else c.score}" for i, c in d.entries.items()
        ]
        assert ConceptDictionary.load(write(tmp_path / "d.csv", "\n".join(lines) + "\n"), N).entries == d.entries


def test_saved_dictionary_does_not_fit_a_smaller_sae(tmp_path: Path) -> None:
    path = ConceptDictionary(N, {9: Concept("nine")}).save(tmp_path / "d.json")
    with pytest.raises(ConceptValidationError, match=r"latent 9 out of range 0\.\.4"):
        ConceptDictionary.load(path, 5)


# ---------------------------------------------------------------------- config


def test_from_edits_seed_style() -> None:
    cfg = ConceptConfig.from_edits({"0": 1.2, "3": 0}, N)
    assert cfg.scales == {0: 1.2, 3: 0.0} and cfg.biases == {}
    assert cfg.latents() == [0, 3] and not cfg.is_empty


def test_from_edits_with_scale_and_bias() -> None:
    cfg = ConceptConfig.from_edits({"0": {"scale": 1.2, "bias": 0.1}, 5: {"bias": -2}, "7": {"scale": "3"}}, N)
    assert cfg.scales == {0: 1.2, 5: 1.0, 7: 3.0}
    assert cfg.biases == {0: 0.1, 5: -2.0}  # a zero bias is not stored
    assert all(isinstance(v, float) for v in [*cfg.scales.values(), *cfg.biases.values()])


def test_to_dict_normalised_form_and_round_trip(tmp_path: Path) -> None:
    cfg = ConceptConfig.from_edits({"4": 2, "1": {"scale": 0.5, "bias": 0.25}}, N)
    expected = {
        "n_latents": N,
        "edits": {"1": {"scale": 0.5, "bias": 0.25}, "4": {"scale": 2.0, "bias": 0.0}},
    }
    assert cfg.to_dict() == expected
    assert list(cfg.to_dict()["edits"]) == ["1", "4"]
    path = cfg.save(tmp_path / "configs" / "steer.json")
    assert json.loads(path.read_text()) == expected
    back = ConceptConfig.load(path, N)
    assert back == cfg
    assert ConceptConfig.from_edits(cfg.to_dict()["edits"], N) == cfg


def test_bias_only_latent_still_listed() -> None:
    cfg = ConceptConfig(N, biases={2: 0.5})
    assert cfg.latents() == [2] and not cfg.is_empty
    assert cfg.to_dict()["edits"] == {"2": {"scale": 1.0, "bias": 0.5}}


def test_is_empty() -> None:
    assert ConceptConfig(N).is_empty
    assert ConceptConfig.from_edits({}, N).is_empty
    assert ConceptConfig.from_edits({}, N).to_dict() == {"n_latents": N, "edits": {}}
    cfg = ConceptConfig(N)
    cfg.set(1, 2.0)
    assert not cfg.is_empty


def test_set_replaces_and_clears_bias() -> None:
    cfg = ConceptConfig(N)
    cfg.set(1, 2.0, 0.5)
    assert (cfg.scales, cfg.biases) == ({1: 2.0}, {1: 0.5})
    cfg.set(1, 3.0)
    assert (cfg.scales, cfg.biases) == ({1: 3.0}, {})
    with pytest.raises(ConceptValidationError, match="not a finite number"):
        cfg.set(1, math.nan)
    assert cfg.scales == {1: 3.0}  # a rejected edit leaves the config as it was


@pytest.mark.parametrize(
    ("edits", "fragment"),
    [
        ({"0": math.nan}, "latent 0: scale nan is not a finite number"),
        ({"0": math.inf}, "latent 0: scale inf is not a finite number"),
        ({"0": -math.inf}, "scale -inf is not a finite number"),
        ({"0": {"scale": 1.0, "bias": math.nan}}, "latent 0: bias nan is not a finite number"),
        ({"0": {"bias": math.inf}}, "bias inf is not a finite number"),
        ({"0": "big"}, "scale 'big' is not a finite number"),
        ({"0": None}, "scale None is not a finite number"),
        ({"0": {"scale": [1]}}, "scale [1] is not a finite number"),
        ({str(N): 1.0}, f"latent {N} out of range 0..{N - 1}"),
        ({"-1": 1.0}, "latent -1 out of range"),
        ({"x": 1.0}, "latent 'x' is not an integer"),
        ({1.0: 1.0}, "latent 1.0 is not an integer"),
        ({True: 1.0}, "latent True is not an integer"),
        ({"01": 1.0}, "latent '01' is not an integer"),
    ],
)
def test_bad_edits_are_rejected(edits: dict[Any, Any], fragment: str) -> None:
    with pytest.raises(ConceptValidationError, match="1 bad edits") as err:
        ConceptConfig.from_edits(edits, N)
    assert fragment in str(err.value)


def test_all_bad_edits_reported_together() -> None:
    edits = {"0": 1.5, "1": math.nan, "99": 1.0, "2": {"scale": math.inf, "bias": math.nan}}
    with pytest.raises(ConceptValidationError) as err:
        ConceptConfig.from_edits(edits, N)
    msg = str(err.value)
    assert msg.startswith("4 bad edits: ")
    for fragment in ["latent 1: scale nan", "latent 99 out of range", "latent 2: scale inf", "latent 2: bias nan"]:
        assert fragment in msg, fragment
    assert "latent 0" not in msg


def test_load_config_with_bad_values_and_missing_edits(tmp_path: Path) -> None:
    bad = write(tmp_path / "bad.json", json.dumps({"edits": {"0": {"scale": "inf"}}}))
    with pytest.raises(ConceptValidationError, match="scale 'inf' is not a finite number"):
        ConceptConfig.load(bad, N)
    assert ConceptConfig.load(write(tmp_path / "empty.json", "{}"), N).is_empty
