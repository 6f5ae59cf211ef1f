"""``prepare``: turn a folder of songs into a labelled, chunked 32 kHz dataset (see docs/prepare.md).

Heavy libraries (essentia, demucs, torch) are imported inside the functions that need them.
"""

from musiclit.prep.config import PrepareConfig, QualityThresholds

__all__ = ["PrepareConfig", "QualityThresholds", "run_prepare"]


def run_prepare(*args, **kwargs):
    """Run the pipeline; see :func:`musiclit.prep.pipeline.run_prepare`."""
    from musiclit.prep.pipeline import run_prepare as _run

    return _run(*args, **kwargs)
