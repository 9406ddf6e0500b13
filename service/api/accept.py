"""Content negotiation: which file an Accept header prefers to a JSON answer (RFC 9110 quality values)."""


def _accept_weights(accept: str) -> dict[str, float]:
    """An Accept header -> {media type: its q}; q absent: 1, a q outside 0..1 or no number: 0 (not acceptable)."""
    weights: dict[str, float] = {}
    for item in accept.split(","):
        media, *params = (part.strip() for part in item.split(";"))
        q = next((p.split("=", 1)[1] for p in params if p.lower().replace(" ", "").startswith("q=")), "1")
        try:
            weight = float(q)
        except ValueError:
            weight = 0.0
        weights[media.lower()] = max(weights.get(media.lower(), 0.0), weight if 0.0 <= weight <= 1.0 else 0.0)
    return weights


def _q(weights: dict[str, float], ranges: tuple[str, ...]) -> float:
    """The q of the most specific of `ranges` (most specific first) that the header names (RFC 9110, 12.5.1)."""
    return next((weights[media] for media in ranges if media in weights), 0.0)


def wanted_file(accept: str, files: tuple[str, ...]) -> str | None:
    """The media type of `files` that an Accept header prefers to JSON: the one of highest q (a tie: the first),
    when that q is above 0 and no lower than JSON's (application/json, application/*, */*); a tie goes to the file,
    so "audio/midi, application/json" is MIDI as before. A file's q is its own type's, else its type range's
    ("audio/*" asks for audio/midi and audio/wav); "*/*" alone names no file, so it answers JSON. None: JSON."""
    weights = _accept_weights(accept)
    file_q = {media: _q(weights, (media, media.split("/")[0] + "/*")) for media in files}
    best = max(files, key=file_q.get)
    json_q = _q(weights, ("application/json", "application/*", "*/*"))
    return best if file_q[best] > 0 and file_q[best] >= json_q else None
