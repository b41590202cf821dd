#!/usr/bin/env python3
"""Write the dashboard's alarm chime (siren_gateway/dashboard/alert.wav): two falling tones and a
pause, looped by the page until the alert is acknowledged. Generated here rather than taken from
anywhere, so its licence is ours; 8 kHz, 8-bit, mono keeps it at about 8 KB."""

from __future__ import annotations

import math
import wave
from pathlib import Path

RATE = 8000
OUT = Path(__file__).resolve().parent.parent / "siren_gateway" / "dashboard" / "alert.wav"


def tone(frequency: float, seconds: float) -> list[int]:
    count = int(RATE * seconds)
    fade = int(RATE * 0.01)  # no click at either end
    samples = []
    for i in range(count):
        envelope = min(1.0, i / fade, (count - i) / fade)
        samples.append(int(128 + 90 * envelope * math.sin(2 * math.pi * frequency * i / RATE)))
    return samples


def main() -> None:
    samples = tone(988, 0.22) + tone(740, 0.32) + [128] * int(RATE * 0.46)
    with wave.open(str(OUT), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(1)
        out.setframerate(RATE)
        out.writeframes(bytes(samples))
    print(f"{OUT}: {OUT.stat().st_size} bytes")


if __name__ == "__main__":
    main()
