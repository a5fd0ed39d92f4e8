"""Train one arm on one task with `spacy train`, then evaluate model-best on dev.

    python scripts/run_arm.py TASK ARM --max-steps N [--elmo-options P --elmo-weights W] [--gpu-id G]

TASK: ud (tagger + parser) or wnut17 (ner). ARM: cnn, bert or elmo. The elmo
arm is skipped (exit 0) when no ELMo files are given. Writes
training/TASK-ARM/model-best and metrics/TASK-ARM.json. The configs are
complete as shipped: this only chooses one and passes the vars.
"""
import argparse
import subprocess
import sys
from pathlib import Path

TASK_COMPONENTS = {"ud": ["tagger", "parser"], "wnut17": ["ner"]}


def elmo_overrides(options: Path, weights: Path):
    # Only the files: the listeners take their widths from the upstream at initialize.
    return ["--components.ctxembed_elmo.model.encoder.options_file", str(options),
            "--components.ctxembed_elmo.model.encoder.weight_file", str(weights)]


def main(args) -> None:
    name = f"{args.task}-{args.arm}"
    if args.arm == "elmo" and not (args.elmo_options and args.elmo_weights):
        print(f"{name}: skipped (no ELMo weights given: set vars elmo_options and elmo_weights)")
        return
    output = Path("training") / name
    command = [
        sys.executable, "-m", "spacy", "train", f"configs/{name}.cfg", "--output", str(output),
        "--paths.train", f"corpus/{args.task}/train.spacy", "--paths.dev", f"corpus/{args.task}/dev.spacy",
        "--training.max_steps", str(args.max_steps), "--training.eval_frequency", str(args.eval_frequency),
        "--gpu-id", str(args.gpu_id),
    ]
    if args.arm == "elmo":
        command += elmo_overrides(Path(args.elmo_options), Path(args.elmo_weights))
    subprocess.run(command, check=True)
    Path("metrics").mkdir(exist_ok=True)
    subprocess.run([sys.executable, "-m", "spacy", "evaluate", str(output / "model-best"),
                    f"corpus/{args.task}/dev.spacy", "--output", f"metrics/{name}.json",
                    "--gpu-id", str(args.gpu_id)], check=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("task", choices=sorted(TASK_COMPONENTS))
    parser.add_argument("arm", choices=["cnn", "bert", "elmo"])
    parser.add_argument("--max-steps", type=int, default=2000)
    parser.add_argument("--eval-frequency", type=int, default=200)
    parser.add_argument("--gpu-id", type=int, default=-1)
    parser.add_argument("--elmo-options", default="")
    parser.add_argument("--elmo-weights", default="")
    main(parser.parse_args())
