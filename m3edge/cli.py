"""The ``m3edge`` command line. Commands import their heavy modules lazily: a device without torch can
still run ``m3edge targets``, ``inspect`` and ``run``.

Exit codes: 0 success, 1 a checked property failed, 2 bad usage or bad input (one line on stderr).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from m3edge.errors import M3EdgeError


class Group(click.Group):
    """Turns the project's typed errors into one stderr line and an exit code, never a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except M3EdgeError as e:
            click.echo(f"error: {e}", err=True)
            ctx.exit(e.exit_code)


def emit(obj: dict, as_json: bool, text: str) -> None:
    click.echo(json.dumps(obj, sort_keys=True) if as_json else text)


@click.group(cls=Group)
@click.version_option(package_name="m3edge")
def cli():
    """m3edge: export a memory-augmented MoE agent to edge devices and run it there."""


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def targets(as_json):
    """List the target profiles."""
    from m3edge import targets as t

    rows = [{"name": p.name, "aliases": list(p.aliases), "arch": p.arch, "backend": p.backend,
             "providers": [pr["name"] for pr in p.providers]} for p in t.all_targets()]
    lines = [f"{r['name']:<18} {','.join(r['aliases']) or '-':<8} {r['arch']:<8} {r['backend']:<12} "
             f"{' > '.join(r['providers'])}" for r in rows]
    emit({"targets": rows}, as_json, "\n".join(lines))


@cli.command()
@click.option("--preset", "preset_name", default="small", show_default=True, help="tiny | small | seed")
@click.option("--config", "config_file", type=click.Path(), help="Model config JSON instead of a preset.")
@click.option("--data", "data_dir", type=click.Path(), help="Folder with train.txt and eval.txt.")
@click.option("-o", "--output", required=True, type=click.Path(), help="Checkpoint directory to write.")
@click.option("--steps", default=3000, show_default=True, type=click.IntRange(1))
@click.option("--batch", default=1024, show_default=True, type=click.IntRange(1))
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--json", "as_json", is_flag=True)
def train(preset_name, config_file, data_dir, output, steps, batch, seed, as_json):
    """Train the reference agent on bytes of real text; writes a checkpoint and training_report.json."""
    import torch
    from tqdm import tqdm

    from m3edge import checkpoint
    from m3edge.config import ModelConfig, preset
    from m3edge.data import default_data_dir
    from m3edge.train import TrainConfig, train as run

    cfg = ModelConfig.load(config_file) if config_file else preset(preset_name)
    data = Path(data_dir) if data_dir else default_data_dir()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    tc = TrainConfig(steps=steps, batch=batch, seed=seed)
    bar = tqdm(total=steps, desc="train", unit="step", file=sys.stderr, disable=None)

    def progress(step, loss):
        bar.update(1)
        bar.set_postfix(bpb=f"{loss / 0.6931:.3f}", refresh=False)

    agent, report = run(cfg, data, tc, progress)
    bar.close()
    out = checkpoint.save(agent, output, {"preset": None if config_file else preset_name, "seed": seed,
                                          "data": "calibration_data/train.txt"})
    (out / "training_report.json").write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    ev = report["eval"]
    emit({"checkpoint": str(out), **ev, "baselines": report["baselines"]}, as_json,
         f"wrote {out}: eval {ev['bits_per_byte']:.3f} bits/byte "
         f"(unigram {report['baselines']['unigram_bits_per_byte']:.3f}, "
         f"bigram {report['baselines']['bigram_bits_per_byte']:.3f})")


@cli.command("eval")
@click.argument("path", type=click.Path())
@click.option("--split", default="eval", show_default=True, type=click.Choice(["train", "calibration", "eval"]))
@click.option("--data", "text_file", type=click.Path(), help="Any text file instead of a split.")
@click.option("--data-dir", type=click.Path(), help="Folder holding the splits (default: calibration_data).")
@click.option("--max-bytes", type=click.IntRange(2), help="Evaluate only the first N bytes.")
@click.option("--json", "as_json", is_flag=True)
def eval_cmd(path, split, text_file, data_dir, max_bytes, as_json):
    """Bits per byte, top-1 accuracy and expert usage of a checkpoint, with byte n-gram baselines."""
    from m3edge import checkpoint
    from m3edge.data import default_data_dir, load_split, read_bytes
    from m3edge.evaluate import baselines, evaluate

    agent = checkpoint.load(path)
    data = Path(data_dir) if data_dir else default_data_dir()
    text = read_bytes(text_file) if text_file else load_split(data, split)
    res = evaluate(agent, text, max_bytes=max_bytes)
    scored = text[: res["bytes"]]
    res["baselines"] = baselines(load_split(data, "train"), scored)
    res["data"] = str(text_file) if text_file else f"{data}/{split}.txt"
    b = res["baselines"]
    lines = [f"data            {res['data']} ({res['bytes']} bytes)",
             f"bits/byte       {res['bits_per_byte']:.4f}  (unigram {b['unigram_bits_per_byte']:.4f}, "
             f"bigram {b['bigram_bits_per_byte']:.4f})",
             f"top-1 accuracy  {res['top1_accuracy']:.4f}"]
    for layer, (used, ent) in enumerate(zip(res["experts_used"], res["expert_usage_entropy"])):
        lines.append(f"layer {layer}         {used}/{agent.cfg.n_experts} experts used, "
                     f"usage entropy {ent:.3f} of {res['max_usage_entropy']:.3f} bits")
    res.pop("expert_usage")
    emit(res, as_json, "\n".join(lines))


def main():
    cli(prog_name="m3edge")


if __name__ == "__main__":
    main()
