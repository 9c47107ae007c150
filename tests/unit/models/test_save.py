"""save_final / save_pretrained_atomic: the prompt format a model was trained with travels in `final/`."""

from __future__ import annotations

import json

from polm.data.templating import PROMPT_FORMAT_FILE, TrainedPromptFormat, trained_prompt_format
from polm.models.save import save_final

SUFFIX = "Give the final answer on the last line as 'Answer: <answer>'."


def test_chatml_format_ends_at_im_end_and_plain_at_eos(tiny_tokenizer):
    chat = trained_prompt_format(tiny_tokenizer, chat=True, suffix=SUFFIX)
    assert chat == TrainedPromptFormat(chat=True, suffix=SUFFIX, system=None, stop=("<|im_end|>",),
                                       end_of_turn="<|im_end|>")
    plain = trained_prompt_format(tiny_tokenizer, chat=False)
    assert (plain.chat, plain.end_of_turn, plain.stop) == (False, tiny_tokenizer.eos_token, (tiny_tokenizer.eos_token,))


def test_save_final_writes_the_format_file_and_card_section(tiny_llama, tiny_tokenizer, tmp_path):
    fmt = trained_prompt_format(tiny_tokenizer, chat=True, suffix=SUFFIX, system="Be brief.")
    final = save_final(tiny_llama, tiny_tokenizer, tmp_path, card="# run\n", prompt_format=fmt)
    assert json.loads((final / PROMPT_FORMAT_FILE).read_text()) == {
        "chat": True, "suffix": SUFFIX, "system": "Be brief.", "stop": ["<|im_end|>"], "end_of_turn": "<|im_end|>"}
    assert TrainedPromptFormat.read(final) == fmt
    card = (final / "README.md").read_text()
    assert card.startswith("# run\n") and "## Prompt format" in card and SUFFIX in card


def test_save_final_without_a_format_writes_none(tiny_llama, tiny_tokenizer, tmp_path):
    final = save_final(tiny_llama, tiny_tokenizer, tmp_path, card="# run\n")
    assert not (final / PROMPT_FORMAT_FILE).exists() and TrainedPromptFormat.read(final) is None
    assert (final / "README.md").read_text() == "# run\n"


def test_render_adds_system_and_suffix_as_training_wrote_them(tiny_tokenizer):
    fmt = TrainedPromptFormat(chat=True, suffix="S", system="Be brief.")
    assert fmt.render(tiny_tokenizer, "2 + 2?") == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n2 + 2?\nS<|im_end|>\n<|im_start|>assistant\n")
    assert fmt.render(tiny_tokenizer, "2 + 2?", suffix=False).count("2 + 2?<|im_end|>") == 1
    assert TrainedPromptFormat(chat=False, suffix="S", system="Sys").render(tiny_tokenizer, "q") == "Sys\nq\nS"
    # a conversation that already has a system turn keeps it
    turns = [{"role": "system", "content": "Mine."}, {"role": "user", "content": "q"}]
    assert fmt.wrap(turns) == [{"role": "system", "content": "Mine."}, {"role": "user", "content": "q\nS"}]


def test_wrap_record_gives_training_the_prompt_generation_will_see(tiny_tokenizer):
    fmt = TrainedPromptFormat(chat=True, suffix="S", system="Be brief.")
    rec = fmt.wrap_record({"prompt": "q", "completion": "a"})
    assert rec == {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "q\nS"},
                                {"role": "assistant", "content": "a"}]}
    assert TrainedPromptFormat(chat=True, suffix="S").wrap_record({"prompt": "q", "completion": "a"}) == \
        {"prompt": "q\nS", "completion": "a"}
    assert fmt.wrap_record({"text": "t"}) == {"text": "t"}
    chat = fmt.wrap_record({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]})
    assert chat["messages"][1:] == [{"role": "user", "content": "q\nS"}, {"role": "assistant", "content": "a"}]
