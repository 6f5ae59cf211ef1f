"""Step 3: vocal removal with Demucs: the ``no_vocals`` mix (sum of the non-vocal stems).

The song is read from its file in windows of ``window`` seconds (plus context on both sides), each
window goes through ``demucs.apply.apply_model`` (which itself splits it into overlapping segments), and
the windows are cross-faded, so memory stays bounded for any song length. Applied to every song when
vocal removal is on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from musiclit.data.audio import AudioError
from musiclit.errors import MusiclitError

CONTEXT_S = 2.0
CROSSFADE_S = 0.5


class VocalsError(MusiclitError, RuntimeError):
    """The Demucs model cannot be loaded or run; the message says why."""


def load_demucs(name_or_path: str) -> Any:
    """A Demucs model from a pretrained name (e.g. "htdemucs") or a local weights file.

    A local file may be a Demucs package saved with ``demucs.states.save_model`` / the ``.th`` files of
    the model zoo, or a whole pickled model (``torch.save(model)``).

    Raises:
        VocalsError: The model cannot be found or has no "vocals" source.
    """

    path = Path(name_or_path).expanduser()
    if path.is_file():
        try:
            from demucs.states import load_model

            package = _read_demucs_file(path)
            model = load_model(package) if isinstance(package, dict) else package
        except VocalsError:
            raise
        except Exception as err:
            raise VocalsError(f"{path}: cannot load a Demucs model from this file ({err})") from None
    else:
        try:
            from demucs.pretrained import get_model

            model = get_model(name_or_path)
        except Exception as err:
            raise VocalsError(
                f"cannot load the Demucs model '{name_or_path}' ({err}). Pretrained models download on first "
                "use into $TORCH_HOME/hub/checkpoints; offline, pass --demucs-model with a local weights file."
            ) from None
    if "vocals" not in list(model.sources):
        raise VocalsError(f"Demucs model '{name_or_path}' has no 'vocals' source (sources: {model.sources})")
    model.eval()
    return model


def _demucs_classes() -> list[Any]:
    """The model classes a Demucs package names (``klass``): the only objects a weights file may construct."""
    from demucs.demucs import Demucs
    from demucs.hdemucs import HDemucs
    from demucs.htdemucs import HTDemucs

    return [Demucs, HDemucs, HTDemucs]


def _read_demucs_file(path: Path) -> Any:
    """Read a local Demucs weights file without letting it run code where possible.

    A Demucs package (``demucs.states.serialize_model``, the ``.th`` files of its model zoo) names its model
    class; it is read with ``weights_only=True`` and only the Demucs model classes allowed. Anything else
    (e.g. a whole pickled model) needs full unpickling, which can run code its author chose: that is done
    only for a file that belongs to the user running musiclit and that no one else may write, with a warning.

    Raises:
        VocalsError: The file needs full unpickling and is not the user's own.
    """
    import os
    import pickle
    import sys

    import torch

    try:
        with torch.serialization.safe_globals(_demucs_classes()):
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        reason = str(err).strip().splitlines()[0][:200] if str(err).strip() else "unsupported object"
    info = path.stat()
    own = info.st_uid == os.geteuid() and not info.st_mode & 0o022
    if not own:
        raise VocalsError(
            f"{path}: refused to open this Demucs file: it holds objects other than a Demucs model and tensors "
            f"({reason}), and it does not belong to you (or others may write it), so opening it could run code "
            "someone else chose. Copy it to a file you own if you trust it."
        )
    print(
        f"musiclit: warning: {path} holds arbitrary pickled objects ({reason}); it is opened only because it is "
        "your own file: opening a file like this from someone else could run their code",
        file=sys.stderr,
    )
    return torch.load(str(path), map_location="cpu", weights_only=False)


def pick_device(device: str | None) -> str:
    """ "cuda" when a GPU is available (or requested), else "cpu"."""
    import torch

    if device:
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def separate_no_vocals(
    model: Any, mix: np.ndarray, device: str = "cpu", overlap: float = 0.25, shifts: int = 0
) -> np.ndarray:
    """Sum of the non-vocal stems of ``mix`` (model channels, model rate) -> same shape, float32."""
    import torch
    from demucs.apply import apply_model

    wav = torch.from_numpy(np.ascontiguousarray(mix, dtype=np.float32))
    ref = wav.mean(0)
    mean, std = ref.mean(), ref.std() + 1e-8
    with torch.no_grad():
        stems = apply_model(
            model, ((wav - mean) / std)[None], shifts=shifts, split=True, overlap=overlap, device=device, progress=False
        )[0]
    keep = [i for i, name in enumerate(model.sources) if name != "vocals"]
    out = stems[keep].sum(0) * std + mean
    return out.cpu().numpy().astype(np.float32)


def no_vocals_stream(
    path: Path,
    model: Any,
    out_rate: int,
    out_channels: int,
    device: str = "cpu",
    window: float = 60.0,
    overlap: float = 0.25,
    shifts: int = 0,
):
    """Yield the ``no_vocals`` mix of a file at ``out_rate`` / ``out_channels`` in consecutive blocks.

    Args:
        path: Audio file.
        model: Demucs model (``samplerate``, ``audio_channels``, ``sources``).
        out_rate: Rate of the yielded audio.
        out_channels: Channels of the yielded audio.
        device: Torch device.
        window: Seconds per Demucs window.
        overlap: Demucs' segment overlap.
        shifts: Demucs' random shifts.

    Yields:
        (out_channels, n) float32 blocks that concatenate to the whole song.

    Raises:
        AudioError: The file cannot be decoded.
    """
    import soundfile as sf

    from musiclit.data.audio import convert_channels, resample

    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError) as err:
        raise AudioError(f"{path}: cannot decode audio ({err})") from None
    src_rate, total = info.samplerate, info.frames
    model_rate, model_ch = int(model.samplerate), int(model.audio_channels)
    step = int(window * src_rate)
    ctx = int(CONTEXT_S * src_rate)
    xf_out = int(CROSSFADE_S * out_rate)
    tail: np.ndarray | None = None  # last crossfade region of the previous window (output domain)
    with sf.SoundFile(str(path)) as fh:
        total = fh.frames if fh.frames > 0 else total
        for start in range(0, max(total, 1), step):
            lo, hi = max(0, start - ctx), min(total, start + step + ctx)
            fh.seek(lo)
            x = fh.read(frames=hi - lo, dtype="float32", always_2d=True).T
            if x.shape[1] == 0:
                break
            mix = convert_channels(resample(x, src_rate, model_rate), model_ch)
            sep = separate_no_vocals(model, mix, device, overlap, shifts)
            out = convert_channels(resample(sep, model_rate, out_rate), out_channels)
            # the part of this window that belongs to [start - xf/2, start + step + xf/2)
            a = round((start - lo) / src_rate * out_rate)
            b = round((min(total, start + step) - lo) / src_rate * out_rate)
            half = xf_out // 2
            a0 = max(0, a - half) if tail is not None else a
            b1 = min(out.shape[1], b + half) if start + step < total else out.shape[1]
            piece = out[:, a0:b1]
            if tail is not None:
                n = min(tail.shape[1], piece.shape[1])
                ramp = np.linspace(0.0, 1.0, n, dtype=np.float32)
                piece = piece.copy()
                piece[:, :n] = tail[:, :n] * (1 - ramp) + piece[:, :n] * ramp
            if start + step < total:
                cut = max(0, piece.shape[1] - 2 * half)
                yield piece[:, :cut]
                tail = piece[:, cut:]
            else:
                yield piece
                tail = None
    if tail is not None and tail.size:
        yield tail
