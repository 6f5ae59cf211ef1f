"""A minimal Standard MIDI File reader for test ground truth: note intervals in seconds (constant tempo or
piecewise tempo from set_tempo events). Only what the realmusic-dev MIDI files need; no dependency."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Note:
    """One sounding note."""

    start: float
    end: float
    pitch: int
    channel: int


def _varlen(data: bytes, pos: int) -> tuple[int, int]:
    value = 0
    while True:
        byte = data[pos]
        pos += 1
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            return value, pos


def read_notes(path: str | Path) -> list[Note]:
    """All notes of a MIDI file (format 0 or 1), in seconds."""
    data = Path(path).read_bytes()
    if data[:4] != b"MThd":
        raise ValueError(f"{path}: not a MIDI file")
    _, ntracks, division = struct.unpack(">HHH", data[8:14])
    if division & 0x8000:
        raise ValueError(f"{path}: SMPTE time division not supported")
    pos = 8 + struct.unpack(">I", data[4:8])[0]
    events: list[tuple[int, str, int, int]] = []  # (tick, kind, channel, value)
    tempos: list[tuple[int, int]] = [(0, 500_000)]
    for _ in range(ntracks):
        assert data[pos : pos + 4] == b"MTrk"
        length = struct.unpack(">I", data[pos + 4 : pos + 8])[0]
        pos += 8
        end, tick, status = pos + length, 0, 0
        while pos < end:
            delta, pos = _varlen(data, pos)
            tick += delta
            byte = data[pos]
            if byte & 0x80:
                status = byte
                pos += 1
            if status == 0xFF:
                kind = data[pos]
                size, pos = _varlen(data, pos + 1)
                if kind == 0x51:
                    tempos.append((tick, int.from_bytes(data[pos : pos + 3], "big")))
                pos += size
                continue
            if status in (0xF0, 0xF7):
                size, pos = _varlen(data, pos)
                pos += size
                continue
            high, channel = status & 0xF0, status & 0x0F
            if high in (0xC0, 0xD0):
                pos += 1
                continue
            a, b = data[pos], data[pos + 1]
            pos += 2
            if high == 0x90 and b > 0:
                events.append((tick, "on", channel, a))
            elif high == 0x80 or (high == 0x90 and b == 0):
                events.append((tick, "off", channel, a))
        pos = end
    tempos.sort()

    def seconds(tick: int) -> float:
        t, last_tick, tempo = 0.0, 0, tempos[0][1]
        for change_tick, change_tempo in tempos:
            if change_tick > tick:
                break
            t += (change_tick - last_tick) * tempo / 1e6 / division
            last_tick, tempo = change_tick, change_tempo
        return t + (tick - last_tick) * tempo / 1e6 / division

    notes: list[Note] = []
    open_notes: dict[tuple[int, int], list[int]] = {}
    for tick, kind, channel, pitch in sorted(events, key=lambda e: (e[0], e[1] == "on")):
        if kind == "on":
            open_notes.setdefault((channel, pitch), []).append(tick)
        elif open_notes.get((channel, pitch)):
            start = open_notes[(channel, pitch)].pop(0)
            notes.append(Note(seconds(start), seconds(tick), pitch, channel))
    return notes
