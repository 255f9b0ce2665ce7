"""Caption image files with an exported model: `python -m helpers.caption MODEL img1.jpg img2.jpg ...`.

MODEL is a model folder (`python -m helpers.export RUN_DIR OUT_DIR`) or a Kaggle Model handle. Prints
one line per image, `path: caption`, in the order given; a file that cannot be decoded is named with
the reason on stderr and skipped, as training skips bad images. Exit status 0 when at least one image
was captioned, 2 when none could be or the model cannot be loaded.
"""

from __future__ import annotations

import argparse
import sys

from helpers.captioner import Captioner
from helpers.errors import INPUT_ERRORS
from helpers.images import BadImage


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers.caption", description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="a model folder or a Kaggle Model handle owner/slug/pyTorch/variation")
    parser.add_argument("images", nargs="+", help="image files (JPEG, PNG, ...)")
    parser.add_argument("--beam-size", type=int, help="beam size (default: the model's decoding.json, 3)")
    parser.add_argument("--batch-size", type=int, default=32, help="images decoded at once (default 32)")
    parser.add_argument("--device", help="cpu | cuda (default: cuda when present)")
    args = parser.parse_args(argv)
    try:
        if args.beam_size is not None and args.beam_size < 1:
            raise ValueError(f"--beam-size must be at least 1, got {args.beam_size}.")
        captioner = Captioner.load(args.model, device=args.device)
        results = captioner.caption_files(args.images, beam_size=args.beam_size, batch_size=args.batch_size)
    except (*INPUT_ERRORS, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    captioned = 0
    for path, caption in results:
        if isinstance(caption, BadImage):
            print(f"skipped {path}: {caption.reason}", file=sys.stderr)
        else:
            print(f"{path}: {caption}")
            captioned += 1
    if captioned < len(results):
        print(f"{len(results) - captioned} of {len(results)} files skipped (not decodable).", file=sys.stderr)
    return 0 if captioned else 2


if __name__ == "__main__":
    sys.exit(main())
