"""Beam search at a config's defaults against greedy on fresh demo scenes: the figures in README's
score section ("On 600 fresh scenes and five training seeds, beam 3 scores ...").

For each decoder and training seed this trains the DEMO-mode model (configs/<decoder>.yaml, then
configs/demo.yaml, then the overrides), captions SCENES new scenes (another generator seed, the same
random CNN) greedily and with the smallest of training.eval_beam_sizes above 1 at the config's
training.eval_* options, and prints both CIDEr-D, their difference and its paired standard error.
The demo's own 30 test images are too few for this: there the differences are noise. Trained runs
are kept under WORK_DIR/runs, so a second call with the same settings only decodes.

    python scripts/beam_vs_greedy.py                                  # 4 decoders, seeds 0-4, 600 scenes
    python scripts/beam_vs_greedy.py --decoders LSTM --seeds 0,1 model.hidden_dim=256
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from helpers.config import load_config  # noqa: E402
from helpers.demo import make_demo_dataset  # noqa: E402
from helpers.evaluate import decode_split, per_image_cider  # noqa: E402
from helpers.prepare import prepare_dataset  # noqa: E402
from helpers.train import train  # noqa: E402
from helpers.workdir import features_for, prepared_and_features  # noqa: E402

DECODERS = ("Vanilla_RNN", "LSTM", "Attention_LSTM", "Transformer")
FRESH_SCENES_SEED = 1  # the demo's own scenes come from generator seed 0


def demo_config(decoder: str, seed: int, work_dir: Path, overrides: list[str]):
    """The DEMO-mode config of `decoder` with training seed `seed`, its data and runs under `work_dir`;
    no split is scored at the end of training (this script scores the fresh scenes itself)."""
    session = [f"data.work_dir={work_dir}", f"training.run_dir={work_dir / 'runs'}", f"training.seed={seed}",
               "training.eval_splits=[]", "training.meteor=false"]
    return load_config([decoder, "demo"], session + overrides)


def fresh_scenes(config, count: int):
    """(prepared, feature store): `count` new demo scenes as the test split of their own dataset."""
    work_dir = Path(config.data.work_dir)
    scenes = make_demo_dataset(work_dir / "sources" / f"fresh-{count}", num_images=count + 10,
                               seed=FRESH_SCENES_SEED)
    prepared = prepare_dataset("demo", scenes, work_dir / f"fresh-{count}", min_word_count=1,
                               max_caption_length=config.data.max_caption_length, split="seeded", val_size=5,
                               test_size=count, verbose=False)
    return prepared, features_for(config, prepared, progress=False)


def beam_size(config) -> int:
    """The beam size compared with greedy: the smallest of training.eval_beam_sizes above 1."""
    beams = [size for size in config.training.eval_beam_sizes if size > 1]
    if not beams:
        raise SystemExit(f"training.eval_beam_sizes {config.training.eval_beam_sizes} has no beam size above "
                         "1 to compare with greedy; add one, for example training.eval_beam_sizes=[1,3].")
    return min(beams)


def compare(config, prepared, store, fresh, fresh_store) -> dict[str, float]:
    """Train (or reuse) `config`'s run; greedy and beam CIDEr-D on the fresh scenes' test split."""
    beam = beam_size(config)
    model = train(config, prepared=prepared, store=store, progress=False).model
    references = fresh.references("test")
    scores = []
    for size in (1, beam):
        captions = decode_split(model, fresh_store, "test", beam_size=size,
                                max_length=config.data.max_caption_length, decoding=config.decoding)
        per_image = per_image_cider(references, captions)
        scores.append(np.array([per_image[name] for name in sorted(per_image)]))
    greedy, searched = scores
    difference = searched - greedy
    return {"beam": beam, "greedy": greedy.mean(), "searched": searched.mean(),
            "difference": difference.mean(), "se": difference.std(ddof=1) / math.sqrt(len(difference))}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--decoders", default=",".join(DECODERS), help="comma-separated decoder configs")
    parser.add_argument("--seeds", default="0,1,2,3,4", help="comma-separated training seeds")
    parser.add_argument("--scenes", type=int, default=600, help="fresh scenes to score (default 600)")
    parser.add_argument("--work-dir", type=Path, default=ROOT / "runs" / "beam_vs_greedy")
    parser.add_argument("overrides", nargs="*", help="config overrides, key=value (model.hidden_dim=256)")
    args = parser.parse_args(argv)
    if args.scenes < 2:
        parser.error("--scenes must be at least 2 (the paired standard error needs two images)")
    decoders, seeds = args.decoders.split(","), [int(seed) for seed in args.seeds.split(",")]
    work_dir = args.work_dir.resolve()
    rows = []
    print("decoder         seed  greedy  beam   beam - greedy (paired s.e.)")
    for decoder in decoders:
        for seed in seeds:
            config = demo_config(decoder, seed, work_dir, args.overrides)
            beam_size(config)  # before any data is made
            with contextlib.redirect_stdout(io.StringIO()):  # the helpers' one-line reports, not the table
                prepared, store = prepared_and_features(config, progress=False)
                fresh, fresh_store = fresh_scenes(config, args.scenes)
                scores = compare(config, prepared, store, fresh, fresh_store)
            row = {"decoder": decoder, "seed": seed, **scores}
            rows.append(row)
            print(f"{decoder:15s} {seed:4d}  {row['greedy']:6.3f}  {row['searched']:5.3f}  "
                  f"{row['difference']:+.3f} ({row['se']:.3f})  [beam {row['beam']}]", flush=True)
    return rows


if __name__ == "__main__":
    main()
