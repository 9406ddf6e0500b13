"""Music on the wire: bars of pitch indices -> a Standard MIDI File (by mido) or a piano-roll PNG.

A music model's data spec (manifest `data`, kind "music") says how to read its values: a bar is `shape` [S]
steps of `steps_per_beat` to the quarter note, each step a pitch index i (MIDI note pitch_low + i) or `rest`.
A run of one pitch is one note, across bar lines too (a roll does not tell a repeated note from a held one).
The file is type 0: one track with the tempo (tempo_bpm), a 4/4 time signature, and the notes on channel 0 at
velocity VELOCITY. Used by both REST and gRPC.
"""

import io

import mido
import numpy as np
from PIL import Image

TICKS_PER_BEAT = 480
VELOCITY = 80
ZOOM = 4  # piano-roll pixels per step and per pitch


def notes(bars: np.ndarray, spec: dict) -> list[tuple[int, int, int]]:
    """Bars [T, S] (or any shape, read in order) -> notes (MIDI pitch, start step, length in steps)."""
    flat = np.asarray(bars, np.int64).reshape(-1)
    edges = np.flatnonzero(np.diff(flat, prepend=-1, append=-1))  # each run's start, then the end
    return [(int(flat[a]) + spec["pitch_low"], int(a), int(b - a)) for a, b in zip(edges[:-1], edges[1:], strict=True)
            if flat[a] != spec["rest"]]


def to_midi(bars: np.ndarray, spec: dict) -> bytes:
    """One sample's bars [T, S] -> the bytes of a type-0 Standard MIDI File."""
    ticks = TICKS_PER_BEAT // spec["steps_per_beat"]  # per step
    events = [(start * ticks, "note_on", pitch) for pitch, start, _ in notes(bars, spec)]
    events += [((start + length) * ticks, "note_off", pitch) for pitch, start, length in notes(bars, spec)]
    track = mido.MidiTrack([mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(spec["tempo_bpm"]), time=0),
                            mido.MetaMessage("time_signature", numerator=4, denominator=4, time=0)])
    now = 0
    for time, kind, pitch in sorted(events, key=lambda e: (e[0], e[1] == "note_on")):  # offs before ons
        track.append(mido.Message(kind, note=pitch, velocity=VELOCITY if kind == "note_on" else 0, time=time - now))
        now = time
    end = np.asarray(bars).size * ticks
    track.append(mido.MetaMessage("end_of_track", time=end - now))
    out = io.BytesIO()
    mido.MidiFile(type=0, ticks_per_beat=TICKS_PER_BEAT, tracks=[track]).save(file=out)
    return out.getvalue()


def to_pianoroll_png(bars: np.ndarray, spec: dict) -> bytes:
    """One sample's bars [T, S] -> a PNG piano roll: time left to right, high pitches on top, notes white on
    black with each note's first step gray, bar lines dark gray; ZOOM pixels a step and a pitch."""
    bars = np.asarray(bars, np.int64).reshape(-1, spec["shape"][0])
    pitches, steps = spec["rest"], bars.size
    canvas = np.zeros((pitches, steps), np.uint8)
    canvas[:, :: bars.shape[1]] = 48
    for pitch, start, length in notes(bars, spec):
        row = pitches - 1 - (pitch - spec["pitch_low"])
        canvas[row, start: start + length] = 255
        canvas[row, start] = 160
    out = io.BytesIO()
    Image.fromarray(canvas.repeat(ZOOM, 0).repeat(ZOOM, 1)).save(out, format="PNG")
    return out.getvalue()
