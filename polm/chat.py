"""Interactive chat with a model or adapter: `polm chat --model runs/sft/final`.

Keeps the conversation history and formats it with the tokenizer's chat template, or with the prompt
format the model directory records (its system prompt and suffix, stopping at its end-of-turn token;
`--no-prompt-format` to ignore it). Commands: `/reset` clears the history, `/exit` (or Ctrl-D) quits.
"""

from __future__ import annotations

import argparse
import sys

from polm.generate import (
    add_model_arguments,
    load_for_inference,
    recorded_prompt_format,
    sampling_from_args,
    stop_at,
)
from polm.rollout import HFGenerator
from polm.rollout.text import generate_text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--system", help="a system prompt")


def run(args: argparse.Namespace) -> int:
    model, tokenizer = load_for_inference(args.model, args.device, args.dtype, args.trust_remote_code)
    sampling = sampling_from_args(args)
    sampling.validate()
    fmt = recorded_prompt_format(args.model, use=not args.no_prompt_format, chat=not args.no_chat)
    sampling.stop = stop_at(model, tokenizer, [*(fmt.stop if fmt else ()), *args.stop])
    generator = HFGenerator(model, tokenizer, prompts_per_batch=1)
    history: list[dict] = [{"role": "system", "content": args.system}] if args.system else []
    interactive = sys.stdin.isatty()
    while True:
        if interactive:
            print("you> ", end="", flush=True)
        line = sys.stdin.readline()
        if not line or line.strip() == "/exit":
            return 0
        text = line.strip()
        if not text:
            continue
        if text == "/reset":
            history = history[:1] if args.system else []
            continue
        history.append({"role": "user", "content": text})
        prompt = fmt.render(tokenizer, history) if fmt else history
        [[reply]] = generate_text(generator, tokenizer, [prompt], sampling, seed=args.seed,
                                  chat=not (fmt or args.no_chat))
        reply = reply.strip()
        history.append({"role": "assistant", "content": reply})
        print(f"model> {reply}" if interactive else reply, flush=True)
