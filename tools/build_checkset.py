"""Build the tempo/key check set: 28 movements that the labelling rules were not designed on.

    python -m venv /tmp/checkset-venv
    /tmp/checkset-venv/bin/pip install music21 tinysoundfont soundfile numpy
    /tmp/checkset-venv/bin/pip install --no-deps pretty_midi     # only for its TimGM6mb.sf2 SoundFont
    /tmp/checkset-venv/bin/python tools/build_checkset.py ../checkset
    python tools/bench_prepare.py --accuracy --checkset ../checkset

Why: the real-music development set (``realmusic-dev``) was in view while the tempo rules were written, so
its score is no evidence that they hold elsewhere. This set is built from other scores of the music21
corpus (string quartet movements by Mozart, Haydn and Beethoven, a piano sonata, a rag, a Lied, a trio
sonata; none of them is in the dev set) and was first measured with the rules as they were, before any
change; its figures are in docs/prepare.md.

Each movement is rendered from its first bars (whole bars, about 40 s) at one constant tempo with the
TimGM6mb SoundFont (tinysoundfont), every note at velocity 80, so no accent is added: whatever metrical
accent the audio has comes from the composition. The labelled beat is the notated one (the quarter in
2/4, 3/4 and 4/4; the dotted quarter in 6/8). The tempi are the author's choice of a usual performance
tempo for each movement, fixed before the first measurement; they are not measured from recordings.
The file names carry the movement's tempo marking as a user's files would (``..._adagio.flac``); five of
the 28 have none (menuets, the rag, the Lied, the "Grave", which ``prepare`` does not read as a marking).
Keys are the movements' home keys; the builder checks each against the score's key signature.

Output: ``DEST/audio/<id>.flac`` (44.1 kHz stereo, 16-bit) and ``DEST/labels.json`` (``files``: id, path,
bpm, beat_unit, meter, key, source, duration_s), the layout ``tests/prep_realmusic.py`` reads.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import numpy as np

SR = 44100
EXCERPT_S = 40.0
VELOCITY = 80
# corpus path, file name (as a user would name the movement), beat in quarter notes, beat tempo (BPM), home key
PIECES = [
    ("mozart/k155/movement1", "mozart_k155_1_allegro", 1.0, 132, "D major"),
    ("mozart/k155/movement2", "mozart_k155_2_andante", 1.0, 76, "A major"),
    ("mozart/k155/movement3", "mozart_k155_3_molto_allegro", 1.0, 152, "D major"),
    ("mozart/k156/movement2", "mozart_k156_2_adagio", 1.0, 50, "E minor"),
    ("mozart/k156/movement3", "mozart_k156_3_tempo_di_menuetto", 1.0, 126, "G major"),
    ("mozart/k458/movement1", "mozart_k458_1_allegro_vivace_assai", 1.5, 104, "Bb major"),
    ("mozart/k458/movement2", "mozart_k458_2_menuetto_moderato", 1.0, 132, "Bb major"),
    ("mozart/k458/movement3", "mozart_k458_3_adagio", 1.0, 44, "Eb major"),
    ("mozart/k458/movement4", "mozart_k458_4_allegro_assai", 1.0, 160, "Bb major"),
    ("haydn/opus74no1/movement1", "haydn_op74no1_1_allegro_moderato", 1.0, 120, "C major"),
    ("haydn/opus74no1/movement3", "haydn_op74no1_3_menuetto_allegretto", 1.0, 150, "C major"),
    ("haydn/opus74no1/movement4", "haydn_op74no1_4_finale_vivace", 1.0, 168, "C major"),
    ("beethoven/opus18no1/movement1", "beethoven_op18no1_1_allegro_con_brio", 1.0, 172, "F major"),
    ("beethoven/opus18no1/movement4", "beethoven_op18no1_4_allegro", 1.0, 152, "F major"),
    ("beethoven/opus59no1/movement3", "beethoven_op59no1_3_adagio_molto_e_mesto", 1.0, 46, "F minor"),
    ("beethoven/opus59no2/movement2", "beethoven_op59no2_2_molto_adagio", 1.0, 56, "E major"),
    ("beethoven/opus59no2/movement3", "beethoven_op59no2_3_allegretto", 1.0, 200, "E minor"),
    ("beethoven/opus59no3/movement2", "beethoven_op59no3_2_andante_con_moto_quasi_allegretto", 1.5, 56, "A minor"),
    ("beethoven/opus59no3/movement3", "beethoven_op59no3_3_menuetto_grazioso", 1.0, 120, "C major"),
    ("mozart/k80/movement2", "mozart_k80_2_allegro", 1.0, 132, "G major"),
    ("mozart/k80/movement3", "mozart_k80_3_menuetto", 1.0, 120, "G major"),
    ("haydn/opus1no1/movement1", "haydn_op1no1_1_presto", 1.5, 108, "Bb major"),
    ("haydn/opus1no1/movement2", "haydn_op1no1_2_menuetto", 1.0, 132, "Bb major"),
    ("haydn/opus1no1/movement3", "haydn_op1no1_3_adagio", 1.0, 52, "Eb major"),
    ("mozart/k545/movement1_exposition", "mozart_k545_1_allegro", 1.0, 132, "C major"),
    ("joplin/maple_leaf_rag", "joplin_maple_leaf_rag", 1.0, 96, "Ab major"),
    ("schubert/Lindenbaum", "schubert_der_lindenbaum", 1.0, 66, "E major"),
    ("corelli/opus3no1/1grave", "corelli_op3no1_1_grave", 1.0, 54, "F major"),
]
# General MIDI programs by part name; a four-part score without names is a string quartet
PROGRAMS = (
    ("viola", 41),
    ("violoncell", 42),
    ("cello", 42),
    ("bass", 42),
    ("violin", 40),
    ("piano", 0),
    ("voice", 53),
    ("sing", 53),
    ("soprano", 53),
    ("organ", 19),
)
FIFTHS = ["C", "G", "D", "A", "E", "B", "F#", "C#", "Ab", "Eb", "Bb", "F"]


def soundfont() -> Path:
    """TimGM6mb.sf2 from the pretty_midi package folder (found without importing pretty_midi)."""
    spec = importlib.util.find_spec("pretty_midi")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("pretty_midi is not installed: pip install --no-deps pretty_midi (for its SoundFont)")
    return Path(next(iter(spec.submodule_search_locations))) / "TimGM6mb.sf2"


def part_program(name: str | None, index: int, parts: int) -> int:
    low = (name or "").lower()
    for word, program in PROGRAMS:
        if word in low:
            return program
    return (40, 40, 41, 42)[index] if parts == 4 else 0


def signature_key(sharps: int, mode: str) -> str:
    """The major or minor key of a key signature (sharps > 0, flats < 0)."""
    major = FIFTHS[sharps % 12]
    return f"{major} major" if mode == "major" else f"{FIFTHS[(sharps + 3) % 12]} minor"


def excerpt_notes(score, seconds_per_quarter: float) -> tuple[list[tuple[float, float, int, int]], float]:
    """(start s, length s, MIDI pitch, part) of every note in the first whole bars lasting EXCERPT_S."""
    from music21 import stream

    parts = list(score.parts)
    end = 0.0
    for bar in parts[0].getElementsByClass(stream.Measure):
        end = bar.offset + bar.duration.quarterLength
        if end * seconds_per_quarter >= EXCERPT_S:
            break
    notes = []
    for i, part in enumerate(parts):
        for n in part.flatten().notes:
            length = min(n.duration.quarterLength, end - n.offset)
            if n.offset >= end or length <= 0:
                continue
            for p in n.pitches:
                notes.append((n.offset * seconds_per_quarter, length * seconds_per_quarter, p.midi, i))
    return notes, end * seconds_per_quarter


def render(notes: list[tuple[float, float, int, int]], seconds: float, programs: dict[int, int]) -> np.ndarray:
    """Stereo float32 audio of ``notes`` (one MIDI channel per part), peak-normalised to 0.8."""
    import tinysoundfont

    synth = tinysoundfont.Synth(samplerate=SR, gain=-6)
    sfid = synth.sfload(str(soundfont()))
    for channel, program in programs.items():
        synth.program_select(channel, sfid, 0, program)
    events = sorted(
        [(t, 1, ch, key) for t, _, key, ch in notes] + [(t + d * 0.95, 0, ch, key) for t, d, key, ch in notes],
        key=lambda e: (e[0], e[1]),
    )
    total = int((seconds + 2.0) * SR)
    out = np.zeros((total, 2), dtype=np.float32)
    pos = 0
    for t, on, channel, key in events:
        at = min(total, round(t * SR))
        if at > pos:
            out[pos:at] = np.frombuffer(synth.generate(at - pos), dtype=np.float32).reshape(-1, 2)
            pos = at
        if on:
            synth.noteon(channel, key, VELOCITY)
        else:
            synth.noteoff(channel, key)
    if pos < total:
        out[pos:] = np.frombuffer(synth.generate(total - pos), dtype=np.float32).reshape(-1, 2)
    peak = float(np.abs(out).max())
    return out / peak * 0.8 if peak > 0 else out


def main() -> None:
    """Command-line entry point."""
    import soundfile as sf
    from music21 import corpus, key, meter

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dest", type=Path, help="folder to write (audio/ and labels.json)")
    args = p.parse_args()
    (args.dest / "audio").mkdir(parents=True, exist_ok=True)
    files = []
    for k, (path, name, beat, bpm, home) in enumerate(PIECES, 1):
        score = corpus.parse(path)
        signature = score.recurse().getElementsByClass(key.KeySignature).first()
        expected = signature_key(signature.sharps, home.split()[1])
        if expected != home:
            raise SystemExit(f"{path}: home key {home} does not match its key signature ({expected})")
        notes, seconds = excerpt_notes(score, 60.0 / (bpm * beat))
        programs = {}
        for i, part in enumerate(score.parts):
            programs[i] = part_program(part.partName, i, len(score.parts))
        audio = render(notes, seconds, programs)
        fid = f"{k:02d}_{name}"
        rel = f"audio/{fid}.flac"
        sf.write(str(args.dest / rel), audio, SR, subtype="PCM_16")
        ts = score.recurse().getElementsByClass(meter.TimeSignature).first()
        files.append(
            {
                "id": fid,
                "path": rel,
                "bpm": bpm,
                "beat_unit": "dotted quarter" if beat == 1.5 else "quarter",
                "meter": ts.ratioString if ts else None,
                "key": home,
                "source": f"music21 corpus {path}, bars from the start ({seconds:.1f} s)",
                "duration_s": round(len(audio) / SR, 3),
            }
        )
        print(f"{fid}: {files[-1]['meter']} {bpm} BPM, {home}, {seconds:.1f} s", flush=True)
    (args.dest / "labels.json").write_text(json.dumps({"files": files}, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
