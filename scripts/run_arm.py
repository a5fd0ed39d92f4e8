"""Train one arm on one task with `spacy train`, then evaluate model-best on dev.

    python scripts/run_arm.py TASK ARM [--max-steps N] [--patience P] [--eval-frequency E]
        [--bert-model DIR] [--gpu-id G] [--mixed-precision true|false]
        [--elmo-options P --elmo-weights W]

TASK: ud (tagger + parser) or wnut17 (ner).
ARM: cnn, bert (frozen ctxembed), bert-ft (ctxembed fine-tuned), st
(spacy-transformers fine-tuned) or elmo. The elmo arm is skipped (exit 0)
when no ELMo files are given.

Writes training/TASK-ARM/model-best and metrics/TASK-ARM.json: spaCy's dev
scores (including `speed`, the words/s of `spacy evaluate`) plus
`train_seconds` (the wall time of `spacy train`), `train_cpu_seconds` (its
CPU time, user + system, over all threads) and `disk_mb` (model-best on
disk). The configs are complete as shipped: this only chooses one and passes
the vars. All BERT-family arms get the same model: --bert-model, or the
embedded all-MiniLM-L6-v2.

`spacy train` and `spacy evaluate` run in this process, through the
functions their commands call (`spacy.cli.train.train`,
`spacy.cli.evaluate.evaluate`): every Python start that loads spaCy also
imports every installed spaCy plugin (spaCy reads all its entry points when
it builds a pipeline; spacy-transformers alone takes seconds), which is
most of a smoke run's time. So the timings start after the imports.
"""
import argparse
import json
import resource
import time
from pathlib import Path

TASK_COMPONENTS = {"ud": ["tagger", "parser"], "wnut17": ["ner"]}
ARMS = ["cnn", "bert", "bert-ft", "st", "elmo"]
BERT_ARMS = ("bert", "bert-ft", "st")


def arm_overrides(args) -> list:
    """The vars, as `spacy train` overrides, for this arm."""
    if args.arm == "elmo":
        # Only the files: the listeners take their widths from the upstream at initialize.
        return ["--components.ctxembed_elmo.model.encoder.options_file", args.elmo_options,
                "--components.ctxembed_elmo.model.encoder.weight_file", args.elmo_weights]
    if args.arm not in BERT_ARMS:
        return []
    model_dir = bert_model_dir(args.bert_model)
    overrides = ["--paths.bert_model", model_dir]
    if args.arm == "bert":
        # The frozen arm mixes every hidden state: the configs list MiniLM's 7, which
        # would be the bottom half of a 12-layer model, and out of range for a 4-layer one.
        overrides += ["--components.ctxembed_bert.model.encoder.layers", json.dumps(all_layers(model_dir))]
    if args.mixed_precision and args.arm == "bert-ft":
        overrides += ["--components.ctxembed_bert.model.encoder.precision", "fp16"]
    elif args.mixed_precision and args.arm == "st":
        overrides += ["--components.transformer.model.mixed_precision", "true"]
    return overrides


def bert_model_dir(name: str) -> str:
    if name:
        return name
    from spacy_ctxembed.models.hf_loading import resolve_model_dir

    return str(resolve_model_dir(None, component="run_arm"))


def model_folder(name: str) -> Path:
    """The folder a model directory or a hub name in the local cache is read from."""
    from spacy_ctxembed.models.hf_loading import resolve_model_dir

    return resolve_model_dir(name or None, component="run_arm --bert-model")


def all_layers(model_dir: str) -> list:
    """Every hidden state of the model (its embedding output and each layer's), by index."""
    config = json.loads((model_folder(model_dir) / "config.json").read_text(encoding="utf8"))
    depth = config.get("num_hidden_layers", config.get("n_layers"))  # (DistilBERT's name)
    if not isinstance(depth, int):
        raise SystemExit(f"--bert-model {model_dir}: its config.json gives no number of layers")
    return list(range(depth + 1))


def check_steps(name: str, max_steps: int, eval_frequency: int, patience) -> None:
    """spacy train scores (and keeps as model-best, the pipeline evaluated here) only
    every eval_frequency steps: steps after the last of those would be trained but
    never scored, and with max_steps or patience below eval_frequency the arm's
    scores would be those of its first step, under its max_steps."""
    vars_ = "vars ft_max_steps, ft_eval_frequency" if name.endswith(("-bert-ft", "-st")) else \
        "vars max_steps, patience, eval_frequency"
    if eval_frequency < 1:
        raise SystemExit(f"{name}: --eval-frequency {eval_frequency}: must be at least 1 ({vars_})")
    if max_steps and max_steps % eval_frequency:
        scored = max_steps // eval_frequency * eval_frequency
        raise SystemExit(
            f"{name}: --max-steps {max_steps} is not a multiple of --eval-frequency {eval_frequency}: "
            f"spacy train would score model-best (what is evaluated) at steps 0, {eval_frequency}, ... only, so "
            f"steps {scored + 1}..{max_steps} would be trained and never scored; give a multiple ({vars_})")
    if patience and patience < eval_frequency:
        raise SystemExit(
            f"{name}: --patience {patience} is below --eval-frequency {eval_frequency}: spacy train would stop "
            f"at step {patience}, before any score but step 0's, and evaluate that model-best ({vars_})")


def disk_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def main(args) -> None:
    name = f"{args.task}-{args.arm}"
    if args.arm == "elmo" and not (args.elmo_options and args.elmo_weights):
        print(f"{name}: skipped (no ELMo weights given: set vars elmo_options and elmo_weights)")
        return
    if args.mixed_precision and args.gpu_id < 0:
        raise SystemExit(f"{name}: --mixed-precision needs a GPU (--gpu-id)")
    check_steps(name, args.max_steps, args.eval_frequency, args.patience)
    from spacy.cli._util import parse_config_overrides
    from spacy.cli.evaluate import evaluate
    from spacy.cli.train import train

    output = Path("training") / name
    overrides = [
        "--paths.train", f"corpus/{args.task}/train.spacy", "--paths.dev", f"corpus/{args.task}/dev.spacy",
        "--training.max_steps", str(args.max_steps), "--training.eval_frequency", str(args.eval_frequency),
    ]
    if args.patience is not None:
        overrides += ["--training.patience", str(args.patience)]
    overrides += arm_overrides(args)
    start = time.perf_counter()
    cpu_start = _cpu_seconds()
    # (parsed as `spacy train` parses its own command line: values as JSON where they are)
    train(f"configs/{name}.cfg", output, use_gpu=args.gpu_id, overrides=parse_config_overrides(overrides))
    train_seconds = time.perf_counter() - start
    train_cpu_seconds = _cpu_seconds() - cpu_start
    Path("metrics").mkdir(exist_ok=True)
    metrics = Path("metrics") / f"{name}.json"
    evaluate(str(output / "model-best"), Path(f"corpus/{args.task}/dev.spacy"), output=metrics,
             use_gpu=args.gpu_id, silent=False)
    scores = json.loads(metrics.read_text())
    scores.update(train_seconds=round(train_seconds, 1), train_cpu_seconds=round(train_cpu_seconds, 1),
                  disk_mb=round(disk_mb(output / "model-best"), 1),
                  max_steps=args.max_steps, patience=args.patience)
    metrics.write_text(json.dumps(scores, indent=2))


def _cpu_seconds() -> float:
    # CPU time (user + system) of this process, all its threads: less sensitive
    # than wall time to other jobs sharing the cores, so arms trained on a busy
    # machine can still be compared on cost (not exactly: threads that wait
    # for a core they share may spin).
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _flag(text: str) -> bool:
    if text.lower() not in ("true", "false"):
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return text.lower() == "true"


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("task", choices=sorted(TASK_COMPONENTS))
    parser.add_argument("arm", choices=ARMS)
    parser.add_argument("--max-steps", type=int, default=2000, help="0: until patience runs out")
    parser.add_argument("--patience", type=int, default=None, help="steps without improvement (default: config's)")
    parser.add_argument("--eval-frequency", type=int, default=200)
    parser.add_argument("--bert-model", default="", help="model directory for the BERT arms ('': embedded)")
    parser.add_argument("--gpu-id", type=int, default=-1)
    parser.add_argument("--mixed-precision", type=_flag, default=False,
                        help="true: fp16 autocast (GPU) in bert-ft and st")
    parser.add_argument("--elmo-options", default="")
    parser.add_argument("--elmo-weights", default="")
    main(parser.parse_args())
