"""The caption JSON that sits beside every clip: the contract between ``prepare`` and ``fit``.

One JSON file per clip, same stem as the audio (``song_0003.wav`` -> ``song_0003.json``). The fields
follow the seed's schema and stay compatible with audiocraft's per-clip JSON::

    {"description": "upbeat electronic dance track", "genre": "EDM", "mood": "energetic",
     "bpm": 128, "key": "A minor", "instruments": ["synthesizer", "drums"]}

Every field is optional except that a caption must be able to say *something*: ``compose`` never returns
an empty string because a field is missing.
"""

from __future__ import annotations

import json
import math
import os
import random
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from musiclit.errors import ConfigError, MusiclitError
from musiclit.io import atomic_write_json


class CaptionError(MusiclitError, ValueError):
    """A caption JSON that cannot be used; the message names the file and the field."""


# field name -> accepted python types (after json.load); bool is excluded from numbers explicitly.
_STR = (str,)
_NUM = (int, float)
_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "description": _STR,
    "genre": _STR,
    "mood": _STR,
    "bpm": _NUM,
    "key": _STR,
    "instruments": (list,),
    "title": _STR,
    "artist": _STR,
    "keywords": (list,),
    "license": _STR,
    "song_id": _STR,
    "chunk_index": (int,),
    "offset_s": _NUM,
    "melody_path": _STR,
}
_LIST_FIELDS = ("instruments", "keywords")

# Fields that can be merged into a training caption, in the order they are written.
METADATA_FIELDS = ("genre", "mood", "instruments", "bpm", "key", "keywords")


@dataclass
class Caption:
    """Text and labels of one clip.

    Attributes:
        description: Free text describing the music (the main caption).
        genre: Genre label, e.g. "EDM".
        mood: Mood label, e.g. "energetic".
        bpm: Tempo in beats per minute.
        key: Key and scale, e.g. "A minor".
        instruments: Instruments heard in the clip.
        title: Song title.
        artist: Artist name.
        keywords: Extra tags.
        license: License of the source audio.
        song_id: Identifier of the song the clip was cut from (train/validation split key).
        chunk_index: Index of the clip within its song.
        offset_s: Start of the clip within its song, in seconds.
        melody_path: MusicGen-melody only: the audio file whose melody (chroma) conditions this clip, relative
            to the caption JSON's folder (or absolute). Default: the clip itself, drums and bass removed.
        extra: Unknown fields found in the file, kept so that a load/save round trip loses nothing.
    """

    description: str | None = None
    genre: str | None = None
    mood: str | None = None
    bpm: float | None = None
    key: str | None = None
    instruments: list[str] = field(default_factory=list)
    title: str | None = None
    artist: str | None = None
    keywords: list[str] = field(default_factory=list)
    license: str | None = None
    song_id: str | None = None
    chunk_index: int | None = None
    offset_s: float | None = None
    melody_path: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------ validation / IO
    @classmethod
    def from_dict(cls, data: Any, source: str | os.PathLike[str] = "<dict>") -> Caption:
        """Build a caption from a parsed JSON object, validating every known field.

        Args:
            data: The parsed JSON value (must be an object).
            source: Where it came from, used in error messages.

        Raises:
            CaptionError: The value is not an object, or a field has the wrong type.
        """
        if not isinstance(data, dict):
            raise CaptionError(f"{source}: a caption must be a JSON object, got {type(data).__name__}")
        known: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        for name, value in data.items():
            if name not in _FIELD_TYPES:
                extra[name] = value
                continue
            if value is None:
                continue
            types = _FIELD_TYPES[name]
            if isinstance(value, bool) or not isinstance(value, types):
                want = " or ".join(t.__name__ for t in types)
                raise CaptionError(f"{source}: field '{name}' must be {want}, got {type(value).__name__} ({value!r})")
            if name in _LIST_FIELDS:
                if not all(isinstance(v, str) for v in value):
                    raise CaptionError(f"{source}: field '{name}' must be a list of strings, got {value!r}")
                value = [v.strip() for v in value if v.strip()]
            elif name in ("bpm", "offset_s"):
                if not math.isfinite(float(value)) or value < 0:
                    raise CaptionError(f"{source}: field '{name}' must be a finite number >= 0, got {value!r}")
                if name == "bpm" and value == 0:
                    continue  # 0 means "unknown" in some taggers
            elif name == "chunk_index" and value < 0:
                raise CaptionError(f"{source}: field 'chunk_index' must be >= 0, got {value!r}")
            elif isinstance(value, str):
                value = value.strip()
                if not value:
                    continue
            known[name] = value
        return cls(**known, extra=extra)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Caption:
        """Read and validate a caption JSON file.

        Raises:
            CaptionError: The file is missing, is not valid JSON, or a field has the wrong type.
        """
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise CaptionError(f"{path}: caption file not found") from None
        except UnicodeDecodeError as err:
            raise CaptionError(f"{path}: not UTF-8 text ({err})") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise CaptionError(f"{path}: malformed JSON at line {err.lineno} column {err.colno}: {err.msg}") from None
        return cls.from_dict(data, source=path)

    def to_dict(self) -> dict[str, Any]:
        """The JSON object for this caption: unset fields are left out, unknown fields kept."""
        out: dict[str, Any] = {}
        for f in fields(self):
            if f.name == "extra":
                continue
            value = getattr(self, f.name)
            if value is None or (f.name in _LIST_FIELDS and not value):
                continue
            out[f.name] = value
        out.update(self.extra)
        return out

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the caption as JSON, atomically (a crash never leaves half a file)."""
        atomic_write_json(path, self.to_dict())

    # ------------------------------------------------------------------ text
    def metadata_phrases(self) -> dict[str, str]:
        """Readable phrase for each metadata field present, e.g. {"bpm": "128 bpm"}."""
        phrases: dict[str, str] = {}
        if self.genre:
            phrases["genre"] = self.genre
        if self.mood:
            phrases["mood"] = self.mood
        if self.instruments:
            phrases["instruments"] = "instruments: " + ", ".join(self.instruments)
        if self.bpm:
            phrases["bpm"] = f"{round(self.bpm):d} bpm"
        if self.key:
            phrases["key"] = self.key
        if self.keywords:
            phrases["keywords"] = ", ".join(self.keywords)
        return phrases

    def full_text(self) -> str:
        """The deterministic caption: description plus every metadata phrase (used for validation)."""
        parts = [self.description] if self.description else []
        parts.extend(self.metadata_phrases().values())
        if not parts and self.title:
            parts.append(self.title)
        return ". ".join(parts) if parts else FALLBACK_CAPTION


FALLBACK_CAPTION = "music"


@dataclass
class CaptionDropout:
    """Per-field dropout used to compose training captions (MusicGen's recipe, without its bugs).

    With probability ``merge_prob`` the metadata fields are merged into the caption; when merged, the
    description is dropped with ``drop_description_prob`` and each metadata field is kept with
    ``keep_field_prob``. Missing fields are simply skipped, and the result is never empty: if every
    candidate was dropped, the description (or the first present field) is used.

    Attributes:
        merge_prob: Probability of merging metadata fields into the caption.
        drop_description_prob: Probability of dropping the description when metadata is merged.
        keep_field_prob: Probability of keeping each metadata field when metadata is merged.
    """

    merge_prob: float = 0.25
    drop_description_prob: float = 0.5
    keep_field_prob: float = 0.5

    def __post_init__(self) -> None:
        for name in ("merge_prob", "drop_description_prob", "keep_field_prob"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"CaptionDropout.{name} must be in [0, 1], got {value}")


def compose_caption(caption: Caption, rng: random.Random | None, dropout: CaptionDropout | None) -> str:
    """Compose the text that conditions the model for one training example.

    Args:
        caption: The clip's caption.
        rng: Random source; ``None`` (or ``dropout`` None) gives the deterministic full caption.
        dropout: Field dropout probabilities.

    Returns:
        A non-empty caption string.
    """
    if rng is None or dropout is None:
        return caption.full_text()
    phrases = caption.metadata_phrases()
    description = caption.description
    if not phrases or rng.random() >= dropout.merge_prob:
        # no merge: the description alone, or the metadata when there is no description
        return description if description else caption.full_text()
    parts: list[str] = []
    if description and rng.random() >= dropout.drop_description_prob:
        parts.append(description)
    for name in METADATA_FIELDS:
        if name in phrases and rng.random() < dropout.keep_field_prob:
            parts.append(phrases[name])
    if not parts:
        # everything was dropped: never train on an empty caption by accident
        parts.append(description if description else next(iter(phrases.values())))
    return ". ".join(parts)
