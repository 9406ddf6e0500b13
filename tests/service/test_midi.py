"""The music codec: bars -> a Standard MIDI File that mido reads back as the same notes, and a piano-roll PNG."""

import io

import mido
import numpy as np
from PIL import Image

from service.engine import midi

SPEC = {"kind": "music", "shape": [16], "levels": 33, "pitch_low": 55, "rest": 32, "steps_per_beat": 4,
        "tempo_bpm": 90}
R = 32


def read_notes(data: bytes) -> tuple[list[tuple[int, int, int]], mido.MidiFile]:
    """A MIDI file's notes (pitch, start step, length in steps) from mido's note_on / note_off (or velocity 0)."""
    file = mido.MidiFile(file=io.BytesIO(data))
    ticks, now, sounding, found = file.ticks_per_beat // SPEC["steps_per_beat"], 0, {}, []
    for message in file.tracks[0]:
        now += message.time
        if message.type == "note_on" and message.velocity > 0:
            sounding[message.note] = now
        elif message.type in ("note_on", "note_off"):
            start = sounding.pop(message.note)
            found.append((message.note, start // ticks, (now - start) // ticks))
    assert not sounding
    return sorted(found, key=lambda note: note[1]), file


def test_a_midi_file_reads_back_as_the_same_notes():
    bars = np.array([[0] * 4 + [2] * 4 + [R] * 4 + [31] * 4,
                     [31] * 2 + [2] * 2 + [2] * 12,
                     [R] * 15 + [7]])
    expected = [(55, 0, 4), (57, 4, 4), (86, 12, 6), (57, 18, 14), (62, 47, 1)]
    assert midi.notes(bars, SPEC) == expected
    found, file = read_notes(midi.to_midi(bars, SPEC))
    assert found == expected
    assert file.type == 0 and abs(file.length - 12 * 60 / 90) < 1e-5  # 12 beats at 90 bpm
    tempo = next(m for m in file.tracks[0] if m.type == "set_tempo").tempo
    assert tempo == round(60e6 / 90)  # microseconds per beat


def test_notes_starting_where_others_end_and_silence():
    bars = np.array([[5, 6, 5, 6] * 4])  # sixteenths alternating: each off comes before the next on
    found, _ = read_notes(midi.to_midi(bars, SPEC))
    assert found == [(55 + p, s, 1) for s, p in enumerate([5, 6] * 8)]
    silent, file = read_notes(midi.to_midi(np.full((2, 16), R), SPEC))
    assert silent == [] and abs(file.length - 8 * 60 / 90) < 1e-5


def test_the_piano_roll_draws_each_note_at_its_pitch_and_time():
    bars = np.array([[0] * 8 + [R] * 8, [31] * 16])
    image = np.asarray(Image.open(io.BytesIO(midi.to_pianoroll_png(bars, SPEC))))
    z = midi.ZOOM
    assert image.shape == (32 * z, 32 * z)
    assert image[31 * z, 1 * z] == 255 and image[31 * z, 0] == 160  # the lowest pitch, its first step marked
    assert image[0, 20 * z] == 255 and image[0, 16 * z] == 160  # the highest, from the second bar on
    assert (image[: 31 * z, z: 16 * z] == 0).all()  # nothing else sounds in the first bar (bar line aside)
