"""Music on the wire: bars of pitch indices -> a Standard MIDI File or a piano-roll PNG.

A music model's data spec (manifest `data`, kind "music") says how to read its values: a bar is `shape` [S]
steps of `steps_per_beat` to the quarter note, each step a pitch index i (MIDI note pitch_low + i) or `rest`.
A run of one pitch is one note, across bar lines too (a roll does not tell a repeated note from a held one).
The file is type 0: one track with the tempo (tempo_bpm), a 4/4 time signature, and the notes on channel 0 at
velocity VELOCITY, with running status (as mido writes it). Used by both REST and gRPC.

A stream sends a bar at a time, but a note sounding at the end of a bar may go on into the next, which is not
drawn yet. So each chunk of a music stream carries every sample's melody so far (Melodies), not its bar alone: a
held note stays one note, and the last chunk's files are the ones a sample request answers.
"""

import copy
import io
import struct

import mido
import numpy as np
from PIL import Image

TICKS_PER_BEAT = 480
VELOCITY = 80
ZOOM = 4  # piano-roll pixels per step and per pitch
NOTE_ON, NOTE_OFF = 0x90, 0x80  # channel 0


def notes(bars: np.ndarray, spec: dict) -> list[tuple[int, int, int]]:
    """Bars [T, S] (or any shape, read in order) -> notes (MIDI pitch, start step, length in steps)."""
    flat = np.asarray(bars, np.int64).reshape(-1)
    edges = np.flatnonzero(np.diff(flat, prepend=-1, append=-1))  # each run's start, then the end
    return [(int(flat[a]) + spec["pitch_low"], int(a), int(b - a)) for a, b in zip(edges[:-1], edges[1:], strict=True)
            if flat[a] != spec["rest"]]


def _vlq(n: int) -> bytes:
    """A MIDI variable-length quantity: 7 bits a byte, most significant first, the high bit set on all but the last."""
    out = [n & 0x7F]
    while n > 0x7F:
        n >>= 7
        out.append(0x80 | (n & 0x7F))
    return bytes(reversed(out))


class Melody:
    """One sample's melody, given a bar (or all of them) at a time; file() is the MIDI file of the steps so far.
    The events written are kept as bytes, so a bar costs its own notes. The note sounding at the last step is
    ended in file() only: the next bar may hold it."""

    def __init__(self, spec: dict):
        self.rest, self.pitch_low = spec["rest"], spec["pitch_low"]
        self.ticks = TICKS_PER_BEAT // spec["steps_per_beat"]  # per step
        tempo = mido.bpm2tempo(spec["tempo_bpm"]).to_bytes(3, "big")
        self.track = bytearray(b"\x00\xff\x51\x03" + tempo + b"\x00\xff\x58\x04\x04\x02\x18\x08")  # 4/4
        self.running = None  # the last channel event's status byte: the next event with the same one omits it
        self.steps = 0  # steps added
        self.written = 0  # the step of the last channel event
        self.value = self.rest  # the value at the last step (a note sounding there may go on)

    def add(self, bars: np.ndarray) -> "Melody":
        for value in np.asarray(bars, np.int64).reshape(-1).tolist():
            if value != self.value:
                self._end_note()
                if value != self.rest:
                    self._event(NOTE_ON, value, VELOCITY)
                self.value = value
            self.steps += 1
        return self

    def file(self) -> bytes:
        """The type-0 file of the steps so far, the sounding note ended at the end."""
        ended = copy.copy(self)
        ended.track = bytearray(self.track)
        ended._end_note()
        track = ended.track + _vlq((ended.steps - ended.written) * self.ticks) + b"\xff\x2f\x00"  # end of track
        return b"MThd" + struct.pack(">IHHH", 6, 0, 1, TICKS_PER_BEAT) + b"MTrk" + struct.pack(">I", len(track)) + track

    def _end_note(self) -> None:
        if self.value != self.rest:
            self._event(NOTE_OFF, self.value, 0)
        self.value = self.rest

    def _event(self, status: int, value: int, velocity: int) -> None:
        """Write a channel event at the current step."""
        self.track += _vlq((self.steps - self.written) * self.ticks)
        if status != self.running:
            self.track.append(status)
        self.track += bytes([value + self.pitch_low, velocity])
        self.written, self.running = self.steps, status


class Melodies:
    """A music stream's n melodies: add(bar [n, S]) -> each sample's melody so far as a MIDI file."""

    def __init__(self, spec: dict, n: int):
        self.melodies = [Melody(spec) for _ in range(n)]

    def add(self, bars: np.ndarray) -> list[bytes]:
        return [melody.add(bar).file() for melody, bar in zip(self.melodies, bars, strict=True)]


def to_midi(bars: np.ndarray, spec: dict) -> bytes:
    """One sample's bars [T, S] -> the bytes of a type-0 Standard MIDI File."""
    return Melody(spec).add(bars).file()


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
