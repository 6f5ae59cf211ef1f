"""Step 5: compose each clip's caption from the song's labels and the user's own description.

Template syntax: ``{field}`` is replaced by a label; a part in square brackets is dropped when any field
inside it is missing, so a template never produces "None" or a dangling comma. Fields: ``genre``,
``mood``, ``instruments`` (comma-separated), ``bpm`` (rounded), ``tempo_word`` (slow / moderate /
upbeat / fast), ``key``, ``title``, ``artist``, ``album``, ``loudness`` (LUFS). Example (the default)::

    [{genre} ]music[, {mood}][, with {instruments}][, {tempo_word} tempo at {bpm} bpm][, in {key}]
    -> "Synthwave music, upbeat tempo at 118 bpm, in A minor"

A user's own description (``<song>.txt`` / ``<song>.json`` beside the song, or the descriptions CSV)
always wins over the template, and a description edited by hand in an output clip JSON is kept on
re-runs.
"""

from __future__ import annotations

import re
import string

from musiclit.data.caption import FALLBACK_CAPTION, Caption
from musiclit.errors import MusiclitError
from musiclit.prep.labels import labels_to_caption_fields, tempo_word

TEMPLATE_FIELDS = ("genre", "mood", "instruments", "bpm", "tempo_word", "key", "title", "artist", "album", "loudness")
_GROUP = re.compile(r"\[([^\[\]]*)\]")


class TemplateError(MusiclitError, ValueError):
    """A caption template that cannot be used."""


def check_template(template: str) -> None:
    """Validate a template's fields and brackets.

    Raises:
        TemplateError: Unknown field, unbalanced bracket or bad format syntax.
    """
    try:
        names = {f for _, f, _, _ in string.Formatter().parse(template.replace("[", "").replace("]", "")) if f}
    except ValueError as err:
        raise TemplateError(f"caption template {template!r}: {err}") from None
    unknown = names - set(TEMPLATE_FIELDS)
    if unknown:
        raise TemplateError(
            f"caption template {template!r}: unknown field(s) {sorted(unknown)}; use {', '.join(TEMPLATE_FIELDS)}"
        )
    if _GROUP.sub("", template).count("[") or _GROUP.sub("", template).count("]"):
        raise TemplateError(f"caption template {template!r}: unbalanced or nested square brackets")


def template_values(labels: dict) -> dict[str, str]:
    """Template field values of a song's labels (missing fields are absent)."""
    fields = labels_to_caption_fields(labels)
    values: dict[str, str] = {}
    for name in ("genre", "mood", "key", "title", "artist"):
        if fields.get(name):
            values[name] = str(fields[name])
    if labels.get("album"):
        values["album"] = labels["album"]
    if fields.get("instruments"):
        values["instruments"] = ", ".join(fields["instruments"])
    if fields.get("bpm"):
        values["bpm"] = str(round(fields["bpm"]))
        values["tempo_word"] = tempo_word(fields["bpm"]) or ""
    if labels.get("loudness") is not None:
        values["loudness"] = f"{labels['loudness']:.0f} LUFS"
    return {k: v for k, v in values.items() if v}


def render_template(template: str, values: dict[str, str]) -> str:
    """Fill a template; bracketed groups with a missing field disappear. Never returns an empty string."""

    def group(match: re.Match) -> str:
        inner = match.group(1)
        names = [f for _, f, _, _ in string.Formatter().parse(inner) if f]
        if any(n not in values for n in names):
            return ""
        return inner.format(**values)

    text = _GROUP.sub(group, template)
    names = [f for _, f, _, _ in string.Formatter().parse(text) if f]
    text = text.format(**{n: values.get(n, "") for n in names})
    text = re.sub(r"\s+", " ", text).strip(" ,;-")
    return text[:1].upper() + text[1:] if text else FALLBACK_CAPTION


def song_caption(labels: dict, user: dict, template: str, song_id: str) -> tuple[Caption, str]:
    """The caption shared by all clips of a song (without chunk index / offset).

    Args:
        labels: The song's analysis labels.
        user: The user's own fields (description and/or labels) for the song.
        template: Caption template.
        song_id: Song id.

    Returns:
        ``(caption, source)`` where source is "user" or "template".
    """
    fields = labels_to_caption_fields(labels)
    fields.update({k: v for k, v in user.items() if k not in ("song_id", "chunk_index", "offset_s")})
    if user.get("description"):
        source = "user"
    else:
        fields["description"] = render_template(template, template_values({**labels, **_user_labels(user)}))
        source = "template"
    fields["song_id"] = song_id
    extra = {}
    for name in ("bpm_raw", "bpm_confidence", "key_strength", "loudness"):
        if labels.get(name) is not None:
            extra[name] = labels[name]
    caption = Caption.from_dict({**fields, **extra})
    return caption, source


def _user_labels(user: dict) -> dict:
    """User fields in the shape of analysis labels (so templates use the user's genre, key...)."""
    out = {k: user[k] for k in ("bpm", "key", "title", "artist") if user.get(k)}
    if user.get("genre"):
        out["genres"] = [user["genre"]]
    if user.get("mood"):
        out["moods"] = [user["mood"]]
    if user.get("instruments"):
        out["instruments"] = user["instruments"]
    return out
