"""Rebuild the bundled font subset: Noto Sans CJK SC Bold cut down to the glyphs the overlay draws.

Run after adding Chinese names to a built-in label set or words to the overlay or the report (needs ``fonttools``,
a development tool, and Debian's ``fonts-noto-cjk``)::

    python src/endoedge/edge/stages/fonts/build_subset.py [--source /usr/share/fonts/opentype/noto/NotoSansCJK-Bold.ttc]

It writes ``NotoSansCJKsc-Bold-subset.otf`` and ``NotoSansCJKsc-Bold-subset.chars.txt`` (the characters
covered, which the renderer reads to decide when to fall back to a system font). The font is licensed
under the SIL Open Font License 1.1 (``OFL.txt``); the subset keeps its copyright and licence records.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_SOURCE = Path("/usr/share/fonts/opentype/noto/NotoSansCJK-Bold.ttc")
SC_NAME = "Noto Sans CJK SC Bold"
#: Symbols the overlay uses besides ASCII (legend, separators, ellipsis, comparison signs).
SYMBOLS = "·…■□┆—–≥≤×"


def wanted_characters() -> str:
    """ASCII, the overlay's symbols and words, the report's words, and every name of the built-in label sets."""
    sys.path.insert(0, str(HERE.parents[3]))
    from endoedge.core.labels import BUILTIN_LABELSETS
    from endoedge.edge.stages.overlay import REPORT_TEXT, UI_TEXT

    chars = {chr(c) for c in range(0x20, 0x7F)} | set(SYMBOLS)
    for labelset in BUILTIN_LABELSETS.values():
        for label in labelset.labels:
            chars |= set(label.name_zh) | set(label.name)
    for table in (UI_TEXT, REPORT_TEXT):
        for words in table.values():
            for text in words.values():
                chars |= set(text)
    return "".join(sorted(chars - {"\n"}))


def build(source: Path, out_dir: Path) -> tuple[Path, int]:
    """Subset ``source`` (the SC face of the collection) into ``out_dir``; returns (font path, bytes)."""
    from fontTools import subset
    from fontTools.ttLib import TTCollection

    collection = TTCollection(str(source))
    index = next(
        (i for i, font in enumerate(collection.fonts) if font["name"].getDebugName(4) == SC_NAME),
        None,
    )
    if index is None:
        raise SystemExit(f"{source}: has no face named {SC_NAME!r}")
    text = wanted_characters()
    options = subset.Options()
    options.font_number = index
    options.name_IDs = ["*"]  # keep copyright, licence and licence URL records
    options.name_languages = ["*"]
    options.hinting = False
    options.desubroutinize = True
    options.layout_features = ["kern", "liga", "locl", "palt", "vert"]
    font = subset.load_font(str(source), options)
    subsetter = subset.Subsetter(options)
    subsetter.populate(text=text)
    subsetter.subset(font)
    cmap = font.getBestCmap()
    covered = "".join(ch for ch in text if ord(ch) in cmap)
    missing = "".join(ch for ch in text if ord(ch) not in cmap and not ch.isspace())
    if missing:
        raise SystemExit(f"{source}: lacks glyphs for {missing!r}")
    target = out_dir / "NotoSansCJKsc-Bold-subset.otf"
    subset.save_font(font, str(target), options)
    (out_dir / "NotoSansCJKsc-Bold-subset.chars.txt").write_text(covered + "\n", encoding="utf-8")
    return target, target.stat().st_size


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args(argv)
    path, size = build(args.source, args.out)
    print(f"{path}: {size} bytes, {len(wanted_characters())} characters")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
