"""The `gpt1` command: each stage a subcommand (README.md, and docs/ for each one's reference)."""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from pipeline import console, errors, outdir
from pipeline.errors import HelpFormatter, UserError, run_reporting


def export(args: argparse.Namespace) -> None:
    """Convert a model directory (native, Hugging Face or original OpenAI) to native or hf; a
    fine-tuned model keeps its task head and task."""
    from pipeline.data.tokenizer import holds_released_vocabulary, load_tokenizer, save_tokenizer
    from pipeline.model_dir import load_model

    src, dst = Path(args.src).absolute(), Path(args.dst).absolute()
    if src == dst or src in dst.parents or dst in src.parents:
        raise UserError(f"{dst}: is (or holds, or lies in) the source {src}; write the export elsewhere")
    outdir.check_replaceable(
        dst, "a model directory", lambda d: (d / "config.json").is_file(), args.overwrite
    )
    outdir.check_writable(dst)
    outdir.remove_orphans(dst)
    gpt = load_model(src)
    if args.format == "hf" and gpt.config.arch != "transformer":
        raise UserError(
            f"{src}: holds an {gpt.config.arch}, which has no Hugging Face layout; export it as native"
        )
    # Written beside the destination, then renamed: no half-written model directory is left.
    tmp = outdir.sibling(dst, "tmp")
    try:
        gpt.save_pretrained(tmp, format=args.format)
        if holds_released_vocabulary(src):  # as the released encoder reads it, whatever the layout
            save_tokenizer(load_tokenizer(src), tmp / "tokenizer.json")
        elif (src / "tokenizer.json").exists():
            shutil.copy(src / "tokenizer.json", tmp / "tokenizer.json")
        # A fine-tuned model's task head, its task and its card go with it, in either layout
        # (model.from_pretrained reads both): without them predict and serve refuse the copy.
        kept = [n for n in FINETUNED_FILES if (src / n).is_file()]
        for name in kept:
            shutil.copy(src / name, tmp / name)
        outdir.swap_into_place(tmp, dst)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    head = " with its task head (head.safetensors, task.json)" if "head.safetensors" in kept else ""
    print(f"wrote {args.format} weights ({gpt.num_params():,} parameters){head} to {dst}")


FINETUNED_FILES = ("head.safetensors", "task.json", "README.md")  # tuning/finetune.py writes the first two


# Each stage's verb: the module that brings its options (add_arguments), entry (run) and --help
# text, and its one line in `gpt1 --help`. A module is imported only for the verb being run (or
# asked about): `gpt1 --help` and a verb's --help import neither torch nor Ray for the others.
VERBS = {
    "prepare": ("pipeline.data.prepare_cli", "corpus -> tokenizer and packed token shards (Ray Data)"),
    "pretrain": ("pipeline.train.pretrain_cli", "prepared dataset -> pretrained GPT (Ray Train)"),
    "finetune": ("tuning.finetune_cli", "pretrained checkpoint + task -> fine-tuned model (L3 = L2 + λ·L1)"),
    "sweep": ("tuning.search", "Ray Tune sweep of the fine-tuning settings and λ, per task"),
    "evaluate": ("pipeline.eval.evaluate", "a checkpoint's loss, perplexity and bits per byte on a corpus"),
    "generate": ("pipeline.eval.generate", "continue a prompt with any checkpoint"),
    "predict": ("tuning.predict", "a fine-tuned model's predictions on new rows (Ray Data)"),
    "serve": ("tuning.serve", "a model behind an HTTP endpoint on Ray Serve (/predict, /generate)"),
    "report": ("tuning.report", "the paper's tables and Figure 2, ours beside the paper's, from MLflow"),
    "demo": ("gpt1.demo", "the whole pipeline on built-in data (or yours), locally"),
}


def build_parser(verbs=None) -> argparse.ArgumentParser:
    """The `gpt1` parser: every verb with its options (verbs None), or only those named in verbs
    (the others listed by name and help line, their modules not imported)."""
    import importlib

    p = argparse.ArgumentParser(prog="gpt1", description="GPT-1 pre-training and fine-tuning on Ray")
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser(
        "export",
        help="convert weights between formats",
        description=export.__doc__,
        formatter_class=HelpFormatter,
    )
    e.add_argument("src", help="model directory: native, Hugging Face, or the original OpenAI release")
    e.add_argument("dst", help="directory to write")
    e.add_argument(
        "--format",
        choices=["native", "hf"],
        default="native",
        help="native (this project's model.safetensors) or hf (transformers' OpenAIGPTLMHeadModel)",
    )
    e.add_argument(
        "--overwrite", action="store_true", help="replace an existing model directory (nothing else)"
    )
    e.set_defaults(func=export)

    for name, (path, help_) in VERBS.items():
        if verbs is not None and name not in verbs:
            sub.add_parser(name, help=help_, add_help=False)
            continue
        module = importlib.import_module(path)
        sp = sub.add_parser(name, help=help_, description=module.__doc__, formatter_class=HelpFormatter)
        module.add_arguments(sp)
        if name in ON_RAY:
            sp.add_argument(
                "--verbose",
                action="store_true",
                help="show Ray's own output on the console too (the log file always has it)",
            )
        sp.set_defaults(func=module.run)
    return p


def verb_of(argv: list[str]) -> str | None:
    """The verb a command line names: its first word that is not an option."""
    return next((a for a in argv if not a.startswith("-")), None)


# The verbs that start Ray: their console shows the project's lines, and a log file holds Ray's too.
ON_RAY = ("prepare", "pretrain", "sweep", "predict", "serve", "demo")


def main(argv: list[str] | None = None) -> int:
    """The `gpt1` command. Called without argv, it is the process's own command line, and a verb
    that starts Ray runs in a child whose console this process filters and logs
    (pipeline/console.py); with argv (a test calling in), the verb runs here, its output as it is.
    Ctrl-C or SIGTERM while it starts up (importing torch, say) ends as the command would: one
    line, 130 or 143."""
    if argv is None:  # the process's own command: a test calling in keeps its own handlers
        errors.sigterm_as_interrupt()
    try:
        return _main(argv)
    except KeyboardInterrupt:
        print("gpt1: interrupted", file=sys.stderr)
        return errors.interrupt_status()


def _main(argv: list[str] | None) -> int:

    words = sys.argv[1:] if argv is None else argv
    args = build_parser({verb_of(words)}).parse_args(argv)
    prog = f"gpt1 {args.command}"
    # A plan or a printed config starts no Ray: its output is the plan or the YAML alone.
    quick = getattr(args, "plan", None) or getattr(args, "print_config", False)
    if argv is not None or args.command not in ON_RAY or console.supervised() or quick:
        return run_reporting(prog, args.func, args)
    where = Path(args.workdir) if args.command == "demo" else Path.cwd()
    return console.supervise(
        sys.argv[1:], console.new_log(where / "logs", args.command), verbose=args.verbose
    )


if __name__ == "__main__":
    sys.exit(main())
