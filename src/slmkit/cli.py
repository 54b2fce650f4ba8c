"""The `slm` command: parses arguments, calls a stage function, prints its result. No logic here."""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from typing import Annotated

import typer
from rich.markup import escape

from slmkit import __version__
from slmkit.config import from_options, option
from slmkit.console import console, out, result_line
from slmkit.errors import SlmError
from slmkit.models.settings import GenerationSettings
from slmkit.tools import apply_threads_setting

app = typer.Typer(
    name="slm",
    help="slmkit: prepare data, fine-tune, export, evaluate and serve a small language model.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

# Each pipeline stage contributes its commands through `register(app)` in `<stage>/commands.py`.
STAGE_COMMANDS = (
    "slmkit.data.commands",
    "slmkit.train.commands",
    "slmkit.export.commands",
    "slmkit.evaluate.commands",
    "slmkit.serve.commands",
    "slmkit.pipeline_commands",
    "slmkit.ui.commands",
    "slmkit.cost.commands",
    "slmkit.rag.commands",
    "slmkit.distill.commands",
    "slmkit.feedback.commands",
    "slmkit.registry.commands",
    "slmkit.monitor.commands",
)


def _version(value: bool) -> None:
    if value:
        out.print(f"slmkit {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    if debug:
        os.environ["SLM_DEBUG"] = "1"


@app.command("chat")
def chat_cmd(
    model: Annotated[
        str, typer.Argument(help="Model reference: default, a folder, a .gguf, a run folder.")
    ],
    prompt: Annotated[
        str | None, typer.Argument(help="One-shot prompt; omit for an interactive chat.")
    ] = None,
    system: Annotated[str | None, typer.Option(help="System message.")] = None,
    temperature: float = option(GenerationSettings, "temperature"),
    max_tokens: int = option(GenerationSettings, "max_tokens"),
    seed: int | None = option(GenerationSettings, "seed"),
) -> None:
    """Chat with a model using its own chat template (transformers backend)."""
    from slmkit.models.chat import ChatSession

    values = {"temperature": temperature, "max_tokens": max_tokens, "seed": seed}
    settings = from_options(GenerationSettings, values)
    session = ChatSession.open(model, system=system, settings=settings)
    if prompt is not None:
        session.ask(prompt, on_text=_stream_to_stdout, on_thinking=_thinking_to_stderr)
        sys.stdout.write("\n")
        return
    console.print(
        f"[dim]chatting with {session.model_name}; /reset clears history, /exit or Ctrl-D quits[/dim]"
    )
    while True:
        try:
            line = input("you> ")
        except (EOFError, KeyboardInterrupt):
            sys.stdout.write("\n")
            return
        if line.strip() in ("/exit", "/quit"):
            return
        if line.strip() == "/reset":
            session.reset()
            continue
        if line.strip():
            sys.stdout.write("model> ")
            session.ask(line, on_text=_stream_to_stdout, on_thinking=_thinking_to_stderr)
            sys.stdout.write("\n")


def _stream_to_stdout(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def _thinking_to_stderr(text: str) -> None:
    """A reasoning model's thinking, dimmed on stderr: stdout carries only the answer."""
    console.print(text, style="dim", end="", markup=False, highlight=False, soft_wrap=True)


@app.command("pull")
def pull_cmd(
    model: Annotated[
        str, typer.Argument(help="Hub model ORG/NAME, optionally @REVISION (branch, tag, commit).")
    ],
) -> None:
    """Download a model from the Hugging Face hub into its cache (resumes an interrupted
    download); every command then takes ORG/NAME, also with HF_HUB_OFFLINE=1. A gated model
    needs its licence accepted on the hub and HF_TOKEN set."""
    from slmkit.errors import ModelNotFoundError
    from slmkit.models.hub import parse_hub_ref, pull

    ref = parse_hub_ref(model)
    if ref is None:
        raise ModelNotFoundError(
            f"{model!r} is not a hub model id", hint="expected ORG/NAME or ORG/NAME@REVISION"
        )
    folder = pull(ref)
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    console.print(f"{ref}: {size / 2**30:.2f} GiB in the Hugging Face cache", soft_wrap=True)
    result_line(str(folder))


@app.command("doctor")
def doctor_cmd() -> None:
    """Check the installation: llama.cpp tools decode on this CPU, torch/CUDA/bf16 run, model cache; say how to fix what is not."""
    from slmkit.doctor import print_report, run_checks

    checks = run_checks()
    print_report(checks)
    if any(c.status in ("missing", "failed") for c in checks if c.required):
        raise typer.Exit(1)


def _register_stages() -> None:
    for module_name in STAGE_COMMANDS:
        if importlib.util.find_spec(module_name.rsplit(".", 1)[0]) is None:
            continue
        try:
            spec = importlib.util.find_spec(module_name)
        except ModuleNotFoundError:
            spec = None
        if spec is not None:
            importlib.import_module(module_name).register(app)


_register_stages()


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors print one line and exit 2; `--debug` shows the traceback."""
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args or os.environ.get("SLM_DEBUG") == "1"
    try:
        apply_threads_setting()  # before any command imports torch
        code = app(args=args, prog_name="slm", standalone_mode=False)
        if isinstance(code, int) and code:
            raise SystemExit(
                code
            )  # non-standalone click returns typer.Exit codes instead of raising
    except SlmError as exc:
        if debug:
            raise
        console.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True)
        raise SystemExit(exc.exit_code) from None
    except (typer.Exit, SystemExit) as exc:
        code = getattr(exc, "exit_code", None)
        if code is None:
            code = getattr(exc, "code", 0)
        raise SystemExit(code or 0) from None
    except typer.Abort:
        console.print("aborted")
        raise SystemExit(130) from None
    except KeyboardInterrupt:
        console.print("interrupted")
        raise SystemExit(130) from None
    except Exception as exc:
        # usage errors (bad option values, unknown commands) carry show() and exit_code in
        # typer's vendored click; print them as click would, without a traceback.
        if hasattr(exc, "show") and hasattr(exc, "exit_code") and not debug:
            exc.show()
            raise SystemExit(2) from None
        if debug:
            raise
        console.print(
            f"[red]internal error:[/red] {escape(f'{type(exc).__name__}: {exc}')} (run with --debug for the traceback)"
        )
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
