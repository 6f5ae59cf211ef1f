"""``python -m musiclit cache``: build the token cache of a dataset ahead of ``fit`` (same flags and configs).

For MusicGen-melody models it also caches the melody (chroma) of every clip, drums and bass removed by Demucs
(``--data.melody_separator``): the slow part, done once.

Example::

    python -m musiclit cache --config configs/base.yaml --config configs/musicgen-small-lora.yaml \\
        --data.data_dir data/mystyle
"""

from __future__ import annotations


def main(argv: list[str]) -> int:
    """Run ``cache``: encode every clip that is not cached yet and say where the cache is."""
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        print("Takes every `fit` option (see `python -m musiclit fit --help`); --data.cache_dir picks the folder.")
        return 0
    from musiclit.train.cli import build_token_cache

    cache, melody = build_token_cache(argv, with_melody=True)
    print(f"token cache: {cache.folder} ({len(cache)} clips)")
    if melody is not None:
        print(f"melody chroma cache: {melody.folder} ({len(melody)} files)")
    return 0
