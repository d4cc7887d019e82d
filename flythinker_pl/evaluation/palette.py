"""One colour per method in every plot: position windows (PNG and TensorBoard images), sweeps, gaps.

SFT and FlyThinker take the first two colours of TensorBoard's own run palette in the order the demo
starts them (SFT first), so the demo's scalar curves and our images agree. A method seen more than
once in one plot (a sweep's points) keeps its colour and changes line style and marker instead.
"""

from __future__ import annotations

from typing import Iterable, Optional

METHOD_COLOURS = {
    "sft": "#ff7043",
    "flythinker": "#0077bb",
    "static": "#33bbee",
    "coconut": "#cc3311",
    "cot": "#ee3377",
    "rag": "#009988",
    "nonpers": "#7f7f7f",
    "flythinker_recurrent": "#332288",
}
OTHER_COLOURS = ("#228833", "#aa3377", "#ccbb44", "#66ccee", "#bbbbbb")  # labels that are no known method
STYLES = (("-", "o"), ("--", "s"), (":", "^"), ("-.", "D"))  # the 1st, 2nd, ... line of one method
REFERENCE_COLOUR = "#555555"  # what is not a method: reference counts, zero lines


def method_colour(method: Optional[str], fallback: int = 0) -> str:
    """The method's colour; anything else takes OTHER_COLOURS[fallback] (cycled)."""
    return METHOD_COLOURS.get(method or "", OTHER_COLOURS[fallback % len(OTHER_COLOURS)])


def line_styles(methods: Iterable[Optional[str]]) -> list[dict]:
    """Matplotlib style keywords (color, linestyle, marker) for lines in this order, one per entry
    of `methods` (None or an unknown name: a colour of its own per line)."""
    styles, seen, others = [], {}, 0
    for method in methods:
        known = method in METHOD_COLOURS
        colour = method_colour(method, others)
        others += not known
        repeat = seen.get(method, 0) if known else 0
        seen[method] = repeat + 1
        linestyle, marker = STYLES[repeat % len(STYLES)]
        styles.append({"color": colour, "linestyle": linestyle, "marker": marker})
    return styles
