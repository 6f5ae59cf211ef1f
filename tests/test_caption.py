"""Caption schema: validation errors name file and field; composition never yields an empty caption."""

from __future__ import annotations

import json
import random

import pytest

from musiclit.data.caption import Caption, CaptionDropout, CaptionError, compose_caption

SEED_EXAMPLE = {
    "description": "upbeat electronic dance track with synthesizer leads and driving bass",
    "genre": "EDM",
    "mood": "energetic",
    "bpm": 128,
    "key": "A minor",
    "instruments": ["synthesizer", "drums", "bass"],
}


def test_round_trip_keeps_every_field(tmp_path):
    data = {**SEED_EXAMPLE, "title": "t", "artist": "a", "keywords": ["k"], "license": "cc-by",
            "song_id": "s1", "chunk_index": 2, "offset_s": 60.0, "custom_field": {"x": 1}}  # fmt: skip
    path = tmp_path / "clip.json"
    path.write_text(json.dumps(data))
    caption = Caption.load(path)
    caption.save(tmp_path / "out.json")
    assert json.loads((tmp_path / "out.json").read_text()) == data


def test_missing_optional_fields_are_fine(tmp_path):
    path = tmp_path / "c.json"
    path.write_text('{"genre": "folk"}')
    caption = Caption.load(path)
    assert caption.description is None and caption.instruments == []
    assert caption.full_text() == "folk"


@pytest.mark.parametrize(
    ("content", "field"),
    [
        ('{"bpm": "fast"}', "bpm"),
        ('{"instruments": "guitar"}', "instruments"),
        ('{"instruments": ["guitar", 3]}', "instruments"),
        ('{"description": 5}', "description"),
        ('{"chunk_index": 1.5}', "chunk_index"),
        ('{"bpm": true}', "bpm"),
        ('{"offset_s": -1}', "offset_s"),
    ],
)
def test_wrong_type_names_file_and_field(tmp_path, content, field):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(CaptionError) as err:
        Caption.load(path)
    assert str(path) in str(err.value) and f"'{field}'" in str(err.value)


def test_malformed_json_names_file_and_position(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"description": "a",\n "genre": }')
    with pytest.raises(CaptionError, match=r"broken\.json: malformed JSON at line 2"):
        Caption.load(path)
    with pytest.raises(CaptionError, match="must be a JSON object"):
        Caption.from_dict(["a"], source="x.json")


def test_full_text_has_description_and_metadata():
    text = Caption.from_dict(SEED_EXAMPLE).full_text()
    for part in ("upbeat electronic", "EDM", "energetic", "128 bpm", "A minor", "synthesizer"):
        assert part in text


def test_compose_never_empty_for_any_subset_of_fields():
    rng = random.Random(0)
    always_drop = CaptionDropout(merge_prob=1.0, drop_description_prob=1.0, keep_field_prob=0.0)
    names = list(SEED_EXAMPLE)
    for mask in range(1 << len(names)):
        data = {n: SEED_EXAMPLE[n] for i, n in enumerate(names) if mask >> i & 1}
        caption = Caption.from_dict(data)
        for dropout in (CaptionDropout(), always_drop, None):
            for _ in range(5):
                assert compose_caption(caption, rng, dropout).strip()


def test_dropout_rates_match_the_recipe():
    """With all fields present: description kept w.p. 1 - merge * drop_desc; each field w.p. merge * keep."""
    caption = Caption.from_dict(SEED_EXAMPLE)
    dropout = CaptionDropout(merge_prob=0.25, drop_description_prob=0.5, keep_field_prob=0.5)
    rng = random.Random(123)
    n = 20000
    texts = [compose_caption(caption, rng, dropout) for _ in range(n)]
    desc = sum("upbeat electronic" in t for t in texts) / n
    genre = sum("EDM" in t for t in texts) / n
    assert abs(desc - (1 - 0.25 * 0.5)) < 0.01
    assert abs(genre - 0.25 * 0.5) < 0.01


def test_compose_without_rng_is_deterministic():
    caption = Caption.from_dict(SEED_EXAMPLE)
    assert compose_caption(caption, None, CaptionDropout()) == caption.full_text()


def test_dropout_probabilities_are_validated():
    with pytest.raises(ValueError, match="merge_prob"):
        CaptionDropout(merge_prob=1.5)
