"""A byte-level BPE tokenizer built in-process (the `tokenizers` library, no download) for the full-size random
backbones (`roberta-large-random`, `deberta-large-random`, `gpt2-large-random`): the kind of tokenizer RoBERTa,
DeBERTa (v1) and GPT-2 use, with RoBERTa's special tokens and post-processor (`<s> A </s></s> B </s>`).

It is trained on a small fixed English text below plus every packaged task's prompt template words and label words
(each repeated, so that every label word, with and without its leading space, is one token: the prompt head needs
that). Training is deterministic and takes well under a second; the result is cached per process. Its vocabulary
(`VOCAB_SIZE` at most) fits inside the random configs' embedding tables, so the ids a run sees are all valid.
"""

from __future__ import annotations

import functools
import re

VOCAB_SIZE = 8000
SPECIALS = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")  # ids 0..4, RoBERTa's order for the first four
LABEL_REPEAT = 64  # copies of each label word in the corpus: enough for BPE to merge it into one token

CORPUS = """\
The film is a charming and often affecting journey, though its second half drags and the ending feels rushed.
It was a great movie, one of the best of the year; the acting was terrible and the plot made little sense.
A quiet, thoughtful drama about a family that learns to live with its losses, told with warmth and humour.
Critics said the story was predictable, but audiences loved the music, the colours and the final scene.
What is the capital of France? Who wrote the novel? When did the war end? How many people live in the city?
Where is the nearest station, and why does the train stop there? Which country has the largest population?
The committee approved the plan on Tuesday after a long debate about its cost and its effect on local schools.
Officials said the new law would take effect next month, while opponents argued that it went too far.
The company reported higher profits for the third quarter, and its shares rose sharply in early trading.
Scientists found that the drug reduced symptoms in most patients, although some reported mild side effects.
I think this is a good idea, but I am not sure that everyone will agree with it. Maybe we should ask them first.
She said that he had never been to the museum, and he replied that he did not like paintings anyway.
The man is playing a guitar on the street. A woman is reading a book in the park. Two children are running.
If the weather is fine tomorrow, we will go to the beach; otherwise we will stay at home and watch a movie.
This product works well and arrived on time. The battery does not last long and the screen is too dark.
The government must act now to protect the environment, reduce pollution and support renewable energy.
He was born in a small town, studied law at the university and later became a judge of the supreme court.
Is it true that the river flows north? Yes, it does. No, it does not. The answer depends on the season.
"""


def _prompt_texts() -> list[str]:
    """Every packaged task's template words and label words, label words repeated (with and without a space)."""
    from sptbench.data.specs import load_spec, packaged_tasks

    texts = []
    for name in sorted(packaged_tasks()):
        prompt = load_spec(name).prompt or {}
        for template in (prompt.get("templates") or {}).values():
            texts.append(re.sub(r"<[^>]*>", " ", template))
        for word in prompt.get("label_words") or ():
            texts.extend([f"{word} {word}"] * LABEL_REPEAT)
    return texts


def build_tokenizer():
    """Train the byte-level BPE tokenizer (uncached: `byte_level_bpe` is the cached one) as a transformers
    `PreTrainedTokenizerFast`."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE, special_tokens=list(SPECIALS), show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator([*CORPUS.splitlines(), *_prompt_texts()], trainer=trainer)
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0), trim_offsets=True,
                                                      add_prefix_space=False)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
        cls_token="<s>", sep_token="</s>", mask_token=AddedToken("<mask>", lstrip=True, special=True),
    )


@functools.cache
def byte_level_bpe():
    """The byte-level BPE tokenizer, built once per process (callers must not change it: `load_backbone` sets only
    its pad token, which it already has, and its padding side, which it sets alike every time)."""
    return build_tokenizer()
