"""`ngpt chat`: talk to a checkpoint in the terminal, the reply streaming token by token.

    ngpt chat --ckpt checkpoints/best.pt                    # interactive: /reset clears the history, /exit quits
    ngpt chat --ckpt checkpoints/sft/ -p "What is ngpt?"    # one answer, then exit 0 (scripts)
    ngpt chat --ckpt hub-download/ --temperature 0 --system-file my_system.txt

The checkpoint is a .pt file or a folder holding best.pt (or latest.pt): a phase folder,
checkpoints/, an `ngpt hub download` folder. It carries its tokenizer, so nothing else is needed.
Sampling comes from the `generation` settings (defaults < --config < NGPT_GENERATION__* < flags).
The system prompt is --system or --system-file, else configs/system.txt when it exists (run from an
ngpt checkout), else none; `--system ""` turns it off. Before each turn the oldest turns are dropped
until the prompt plus --max-new-tokens fits the model's context; a single message too long to fit
is an error naming the numbers. With -p and stdout not a terminal, only the reply goes to stdout
(tables and stats go to stderr): `ngpt chat --ckpt X -p "hi" > reply.txt`. Text that is not valid
Unicode (bytes a non-UTF-8 terminal or argument carried in, a lone surrogate) is refused with a
message saying which character: -p, --system and --system-file before the model loads; a typed
line at the prompt, and the chat goes on.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Callable, Optional

import typer
from rich.console import Console

from ngpt.cli.common import CkptOpt, ConfigOpt, PrintConfigOpt, ThreadsOpt, WeightsOpt, resolve_settings, setting_help
from ngpt.console import console, err_console, error_panel, kv_table

if TYPE_CHECKING:
    from ngpt.engine import Engine, GenerationResult
    from ngpt.sampling import SamplingParams

DEFAULT_SYSTEM_FILE = Path("configs/system.txt")
COMMANDS = "/reset clears the history (the system prompt stays) · /exit or Ctrl-D quits"


# ---------------------------------------------------------------------------------------------
# The conversation, apart from the terminal (tests drive it directly).


@dataclass
class Turn:
    result: GenerationResult
    seconds: float  # wall time of the whole answer, prefill included
    dropped: int  # oldest messages left out so the prompt fits the context


class ChatSession:
    """The history of one conversation with one engine; `ask` streams one answer and records it."""

    def __init__(self, engine: Engine, params: SamplingParams, system: str | None) -> None:
        self.engine, self.params = engine, params
        self.system = [{"role": "system", "content": system}] if system else []
        self.history: list[dict] = []  # user and assistant messages, oldest first

    def reset(self) -> None:
        self.history = []

    def ask(self, text: str, on_text: Callable[[str], None], on_start: Callable[[], None] = lambda: None) -> Turn:
        """Answer `text` given the history; on_text gets each new piece of the reply as it is made.

        on_start runs once the conversation fits the context, just before generation starts.

        A ValueError (the message alone does not fit the context, or is not valid Unicode) leaves
        the history as it was, and so does an interrupted answer.
        """
        from ngpt.chat_format import prompt_ids
        from ngpt.chat_format import fit_messages
        from ngpt.tokenizer import check_encodable

        check_encodable(text, "The message")

        messages = [*self.system, *self.history, {"role": "user", "content": text}]
        tok, seq_len = self.engine.tok, self.engine.model.cfg.seq_len
        kept = fit_messages(tok, messages, seq_len, self.params.max_new_tokens)
        on_start()
        t0 = time.perf_counter()
        result = self.engine.generate(prompt_ids(tok, kept), self.params, on_step=lambda step: on_text(step.text))
        seconds = time.perf_counter() - t0
        # Dropped turns stay dropped: the next turn would have to drop them again anyway.
        self.history = [m for m in kept if m["role"] != "system"]
        self.history.append({"role": "assistant", "content": result.text.strip()})
        return Turn(result, seconds, len(messages) - len(kept))


def footer(turn: Turn, seed_given: bool) -> str:
    r = turn.result
    parts = [f"{len(r.ids)} tokens in {turn.seconds:.2f} s ({len(r.ids) / turn.seconds:.1f} tokens/s, "
             f"prefill {r.prefill_ms:.0f} ms)",
             "stop: end of turn" if r.finish_reason == "eot" else "stop: --max-new-tokens reached"]
    if r.seed is not None and not seed_given:
        parts.append(f"seed {r.seed} (--seed {r.seed} repeats it)")
    if turn.dropped:
        parts.append(f"{turn.dropped} oldest messages dropped to fit the context")
    return " · ".join(parts)


# ---------------------------------------------------------------------------------------------
# The command.


def chat(
    ckpt: CkptOpt,
    prompt: Annotated[Optional[str], typer.Option("--prompt", "-p", help="Answer this once and exit (for scripts).")] = None,
    system: Annotated[
        Optional[str], typer.Option(help=f'System prompt (default: {DEFAULT_SYSTEM_FILE} when present; "" = none).')
    ] = None,
    system_file: Annotated[
        Optional[Path], typer.Option(exists=True, dir_okay=False, help="Read the system prompt from this UTF-8 file.")
    ] = None,
    max_new_tokens: Annotated[Optional[int], typer.Option(min=1, help=setting_help("generation.max_new_tokens"))] = None,
    temperature: Annotated[Optional[float], typer.Option(min=0, help=setting_help("generation.temperature"))] = None,
    top_k: Annotated[Optional[int], typer.Option(min=0, help=setting_help("generation.top_k"))] = None,
    top_p: Annotated[Optional[float], typer.Option(help=setting_help("generation.top_p"))] = None,
    repetition_penalty: Annotated[Optional[float], typer.Option(help=setting_help("generation.repetition_penalty"))] = None,
    seed: Annotated[Optional[int], typer.Option(help=setting_help("generation.seed"))] = None,
    no_kv_cache: Annotated[bool, typer.Option("--no-kv-cache", help="Recompute the whole sequence per token (slow; for comparison).")] = False,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N | mps.")] = "auto",
    precision: WeightsOpt = "auto",
    threads: ThreadsOpt = None,
    config: ConfigOpt = None,
    print_config: PrintConfigOpt = False,
) -> None:
    """Chat with a checkpoint in the terminal; the reply streams as it is generated."""
    gen = {"max_new_tokens": max_new_tokens, "temperature": temperature, "top_k": top_k, "top_p": top_p,
           "repetition_penalty": repetition_penalty, "seed": seed}
    if system is not None and system_file is not None:
        raise typer.BadParameter("give --system or --system-file, not both", param_hint="--system/--system-file")
    system_text, system_origin = system_prompt(system, system_file)
    from ngpt.tokenizer import check_encodable

    if prompt is not None:  # before the model loads: argv can carry bytes that are not UTF-8
        check_encodable(prompt, "-p/--prompt")
    if system_text is not None:
        check_encodable(system_text, system_origin)

    import torch  # heavy imports only once a chat really starts: `ngpt --help` stays fast

    from ngpt.device import device_label
    from ngpt.inference import checkpoint_generation, load_engine, weights_label
    from ngpt.sampling import SamplingParams
    from ngpt.model import param_count

    if threads is not None:
        torch.set_num_threads(threads)
    engine, state, path, chosen = load_engine(ckpt, device, precision, use_kv_cache=not no_kv_cache)
    # The checkpoint's own generation settings < --config < env < flags.
    settings = resolve_settings(config, None, {"generation": gen}, print_config, base=checkpoint_generation(state, path))
    model, tok, dev = engine.model, engine.tok, engine.device
    params = SamplingParams.from_settings(settings.generation)
    seq_len = model.cfg.seq_len
    capped = ""
    if params.max_new_tokens >= seq_len:
        # No room would be left for any prompt; half the context for the reply keeps chat usable.
        capped = f" (capped from {params.max_new_tokens}: the model's context is {seq_len} tokens)"
        params = SamplingParams.from_settings(settings.generation, max_new_tokens=seq_len // 2)

    # Scripts piping `-p` get only the reply on stdout; everything else goes to stderr then.
    ui = console if prompt is None or sys.stdout.isatty() else err_console
    m = model.cfg
    ui.print(kv_table("ngpt chat", {
        "checkpoint": str(path),
        "trained": f"{state.get('phase', '?')} phase, step {state.get('step', '?')}",
        "model": f"{param_count(m):,} params · {m.dims_label}",
        "tokenizer": f"{tok.vocab_size:,} ids · sha256 {tok.sha256[:12]}",
        "device": device_label(dev),
        "precision": weights_label(engine.device, precision, chosen),
        "KV cache": "off (--no-kv-cache)" if no_kv_cache else "on",
        "sampling": sampling_label(params),
        "max new tokens": f"{params.max_new_tokens}{capped}",
        "system prompt": f"{system_origin}: {shorten(system_text)}" if system_text else system_origin,
        **({} if prompt is not None else {"commands": COMMANDS}),
    }))
    session = ChatSession(engine, params, system_text)
    if prompt is not None:
        turn = session.ask(prompt, write_reply)
        write_reply("\n")
        ui.print(footer(turn, params.seed is not None), style="dim", highlight=False, soft_wrap=True)
        return
    interactive(session, ui, params.seed is not None)


def interactive(session: ChatSession, ui: Console, seed_given: bool) -> None:
    """Read a line, answer it, repeat; /reset, /exit, Ctrl-D. Ctrl-C stops an answer, or quits at the prompt."""
    while True:
        try:
            text = ui.input("[bold cyan]you[/]: ").strip()
        except (EOFError, KeyboardInterrupt):
            ui.print()
            return
        except UnicodeDecodeError as e:  # a terminal sending another encoding than the one Python reads
            ui.print(f"that line is not valid {e.encoding} text (byte 0x{e.object[e.start]:02X}); set the terminal "
                     "to UTF-8 and type it again", style="yellow", markup=False, highlight=False)
            continue
        if not text:
            continue
        if text.startswith("/"):
            if text == "/exit":
                return
            if text == "/reset":
                session.reset()
                ui.print("history cleared (the system prompt stays)", style="dim")
            else:
                ui.print(f"unknown command {text!r}; {COMMANDS}", style="yellow", markup=False, highlight=False)
            continue
        try:
            turn = session.ask(text, write_reply, on_start=lambda: ui.print("[bold green]ngpt[/]: ", end=""))
        except ValueError as e:  # this message alone does not fit the context: say so, keep chatting
            error_panel(str(e), "cannot answer this")
            continue
        except KeyboardInterrupt:
            write_reply("\n")
            ui.print("stopped; this turn is not kept in the history", style="dim")
            continue
        write_reply("\n")
        ui.print(footer(turn, seed_given), style="dim", highlight=False, soft_wrap=True)


def write_reply(piece: str) -> None:
    """Reply text goes to stdout as it comes, never wrapped or styled by Rich (it is the model's, verbatim)."""
    console.print(piece, end="", markup=False, highlight=False, emoji=False, soft_wrap=True)  # Rich flushes


def system_prompt(system: str | None, system_file: Path | None) -> tuple[str | None, str]:
    """(the system prompt or None, where it came from) for the info table."""
    if system_file is not None:
        return read_utf8(system_file).strip() or None, f"--system-file {system_file}"
    if system is not None:
        return system.strip() or None, "--system" if system.strip() else 'none (--system "")'
    if DEFAULT_SYSTEM_FILE.is_file():
        return read_utf8(DEFAULT_SYSTEM_FILE).strip() or None, str(DEFAULT_SYSTEM_FILE)
    return None, f"none ({DEFAULT_SYSTEM_FILE} not found here; --system sets one)"


def read_utf8(path: Path) -> str:
    """A UTF-8 text file; a ValueError naming the file and line when it is not UTF-8."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ValueError(f"{path}:{line} is not valid UTF-8 (byte 0x{data[e.start]:02X}); save it as UTF-8.") from None


def sampling_label(p: SamplingParams) -> str:
    if p.temperature == 0:
        how = "greedy (temperature 0)"
    else:
        how = f"temperature {p.temperature} · top_k {p.top_k or 'off'} · top_p {p.top_p}"
    if p.repetition_penalty != 1:
        how += f" · repetition penalty {p.repetition_penalty}"
    if p.seed is not None and p.temperature > 0:
        how += f" · seed {p.seed}"
    return how


def shorten(text: str, width: int = 70) -> str:
    one_line = " ".join(text.split())
    return one_line if len(one_line) <= width else one_line[: width - 1] + "…"
